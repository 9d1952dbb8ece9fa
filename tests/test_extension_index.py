"""SegXSlicer/ as the Extensions Index builds it: the description file kept in
``docs/extensions-index/`` and the tree ``git subtree split --prefix=SegXSlicer`` publishes
(the tracked files of ``SegXSlicer/``), checked against the rules the Index states in
Slicer/ExtensionsIndex (``schemas/slicer-extension-catalog-entry-schema-v1.0.2.json``,
``scripts/check_description_files.py``: schema, category, scm_url, extension and repository
names, LF line endings, the top-level CMakeLists.txt's project name, icon and screenshot
URLs, the 100 MB repository limit) and by Slicer's extension guidelines (contributors as
"Firstname Lastname (Organisation)", a homepage that names the licence). The checks are
written here from those rules; no code of the Index is copied. The image URLs cannot be
fetched here: they must name files of the published tree at the described revision."""

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image as PILImage
from test_slicer_static import ACCEPTED_CATEGORIES

REPO = Path(__file__).resolve().parent.parent
DESCRIPTION = REPO / "docs" / "extensions-index" / "SegXSlicer.json"
#: The schema's properties (``additionalProperties: false``) and their types.
SCHEMA_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str, "build_dependencies": list,
                     "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int}  # fmt: skip
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
INDEX_SIZE_LIMIT = 100 * 2**20
CONTRIBUTOR = r"[^(),]+ \([^()]+\)"


def published_tree() -> dict:
    """Path (relative to SegXSlicer/) -> size of every file the subtree split publishes."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", "SegXSlicer"], cwd=REPO, capture_output=True, check=True).stdout
    files = [name for name in listed.decode().split("\0") if name]
    return {name.removeprefix("SegXSlicer/"): (REPO / name).stat().st_size for name in files}


def extension_fields() -> dict:
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', (REPO / "SegXSlicer" / "CMakeLists.txt").read_text()))


def description() -> dict:
    return json.loads(DESCRIPTION.read_text())


def test_the_description_file_follows_the_catalog_entry_schema():
    entry = description()
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= set(SCHEMA_PROPERTIES), set(entry) - set(SCHEMA_PROPERTIES)
    assert all(isinstance(entry[key], SCHEMA_PROPERTIES[key]) for key in entry)
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.")
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    assert b"\r" not in DESCRIPTION.read_bytes()  # LF line endings only


def test_the_description_names_an_accepted_category_and_a_slicer_named_repository():
    entry = description()
    assert entry["category"] in ACCEPTED_CATEGORIES and entry["category"] == extension_fields()["EXTENSION_CATEGORY"]
    url = urlsplit(entry["scm_url"])
    assert url.scheme in ("https", "git") and url.netloc
    repository = Path(url.path.strip("/")).stem
    assert repository.startswith(REPOSITORY_PREFIXES), f"the repository name {repository!r} must start with 'Slicer'"
    assert not DESCRIPTION.stem.lower().startswith("slicer"), "the extension name must not start with 'Slicer'"


def test_the_published_tree_is_the_extension_its_description_names():
    tree = published_tree()
    assert "CMakeLists.txt" in tree and "LICENSE" in tree and "README.md" in tree
    cmake = (REPO / "SegXSlicer" / "CMakeLists.txt").read_text()
    assert re.findall(r"project\s*\(\s*([^\s)]+)", cmake, re.I)[0] == DESCRIPTION.stem  # the Index compares them
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):  # fmt: skip
        assert line in cmake
    assert sum(tree.values()) < INDEX_SIZE_LIMIT
    weights = [name for name in tree if name.endswith((".pt", ".pth", ".onnx", ".ts", ".ckpt", ".safetensors"))]
    assert not weights, weights  # the module talks to a server: no model ships beside it


def test_icon_and_screenshots_are_files_of_the_published_tree_at_the_described_revision():
    entry, fields, tree = description(), extension_fields(), published_tree()
    owner_repository = urlsplit(entry["scm_url"]).path.strip("/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_repository}/{entry['scm_revision']}/"
    urls = [fields["EXTENSION_ICONURL"], *fields["EXTENSION_SCREENSHOTURLS"].split()]
    for url in urls:
        assert url.startswith(prefix), url
        path = url.removeprefix(prefix)
        assert path in tree, f"{path} is not published"
        assert PILImage.open(REPO / "SegXSlicer" / path).format == "PNG"


def test_contributors_homepage_and_licence():
    fields, entry = extension_fields(), description()
    assert re.fullmatch(rf"{CONTRIBUTOR}(, {CONTRIBUTOR})*", fields["EXTENSION_CONTRIBUTORS"]), fields["EXTENSION_CONTRIBUTORS"]
    assert fields["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"].removesuffix(".git"))
    assert len(fields["EXTENSION_DESCRIPTION"]) > 40 and fields["EXTENSION_DEPENDS"] == "NA"
    readme = (REPO / "SegXSlicer" / "README.md").read_text()
    assert "Apache License 2.0" in readme and "Apache License" in (REPO / "SegXSlicer" / "LICENSE").read_text()


def test_the_repository_root_builds_the_same_extension():
    assert "add_subdirectory(SegXSlicer)" in (REPO / "CMakeLists.txt").read_text()
