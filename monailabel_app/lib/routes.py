"""The route table: every route the running server serves, MONAI Label's stock routes and
ours, with the role it needs and what it may read or write. Nothing outside it is served.

The gate (:mod:`lib.security`) looks every request up here *before* the application sees
it: a request that matches no entry, or an entry marked :data:`REMOVED`, is answered 404;
the entry's role decides 401/403 (with API tokens) and its ``body`` the largest request body.
:func:`served_routes` lists what the FastAPI application actually serves, so a test (and the
start-up log) can find a route that a MONAI Label upgrade added and nobody classified.
``docs/SECURITY.md`` shows this table (``python -m lib.routes`` rewrites it there).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.routing import compile_path

from lib.tokens import ADMIN, ANNOTATOR

#: Roles of the table besides the token roles: anyone who reaches the port, and nobody.
NONE, REMOVED = "none", "removed"

#: Request body classes: no body, a small JSON/form body, an image/label/archive upload.
NO_BODY, SMALL, UPLOAD = "none", "small", "upload"

#: Bytes of a SMALL body (JSON params, a form with params) and of a body-less route.
SMALL_BODY_BYTES, NO_BODY_BYTES = 1 << 20, 0


@dataclass(frozen=True)
class Route:
    """One route: ``methods`` and a Starlette ``path`` template (``{name}``, ``{name:path}``)."""

    methods: tuple[str, ...]
    path: str
    role: str
    body: str = NO_BODY
    reads: str = ""
    writes: str = ""
    ours: bool = False  #: served by this app's own handler (else MONAI Label's)



def _removed(methods: str, path: str, why: str) -> Route:
    return Route(tuple(methods.split()), path, REMOVED, reads=why)


TABLE: tuple[Route, ...] = (
    # ours (lib/endpoints.py, lib/uploads.py): every byte of an upload goes through lib/ingest.py
    Route(("GET",), "/info/", ANNOTATOR, reads="model names, labels, methods (no paths)"),
    Route(("POST",), "/infer/{model}", ANNOTATOR, UPLOAD, "a datastore image, the caller's session or the upload", "a temporary copy of the upload (removed); DICOM results to the PACS", ours=True),
    Route(("POST",), "/activelearning/{strategy}", ANNOTATOR, SMALL, "SegU scores, image info", "which annotator holds the image (image info)", ours=True),
    Route(("PUT",), "/session/", ANNOTATOR, UPLOAD, "", "one checked image (or a safely unpacked DICOM series) in the session folder, owned by the caller", ours=True),
    Route(("GET",), "/session/{session_id}", ANNOTATOR, NO_BODY, "the caller's own session (404 for another's)", ours=True),
    Route(("DELETE",), "/session/{session_id}", ANNOTATOR, NO_BODY, "", "the caller's own session", ours=True),
    Route(("PUT",), "/datastore/label", ANNOTATOR, UPLOAD, "the image's header", "a label checked against its image, its info naming the caller", ours=True),
    Route(("PUT",), "/datastore/image", ADMIN, UPLOAD, "", "one checked image in the studies folder", ours=True),
    Route(("PUT",), "/datastore/", ADMIN, UPLOAD, "", "as PUT /datastore/image (MONAI Label's client still calls it)", ours=True),
    # MONAI Label's, kept
    Route(("GET",), "/datastore/", ANNOTATOR, reads="image and label ids, tags and info (no paths)"),
    Route(("HEAD",), "/datastore/image", ANNOTATOR, reads="whether an image exists"),
    Route(("GET",), "/datastore/image", ANNOTATOR, reads="a datastore image"),
    Route(("GET",), "/datastore/image/info", ANNOTATOR, reads="image info (no paths)"),
    Route(("HEAD",), "/datastore/label", ANNOTATOR, reads="whether a label exists"),
    Route(("GET",), "/datastore/label", ANNOTATOR, reads="a datastore label"),
    Route(("GET",), "/datastore/label/info", ANNOTATOR, reads="label info (no paths)"),
    Route(("DELETE",), "/datastore/image", ADMIN, writes="removes an image and its labels"),
    Route(("DELETE",), "/datastore/label", ADMIN, writes="removes a label"),
    Route(("PUT",), "/datastore/image/info", ADMIN, SMALL, writes="image info (annotator holds live there)"),
    Route(("PUT",), "/datastore/label/info", ADMIN, SMALL, writes="label info (who saved it lives there)"),
    Route(("GET",), "/datastore/dataset", ADMIN, reads="every image and label, as a zip"),
    Route(("GET",), "/train/", ANNOTATOR, reads="training status"),
    Route(("POST",), "/train/{model}", ADMIN, SMALL, "final labels; only max_epochs, learning_rate, val_split, batch sizes from params", "new weights in the model folder (kept: .previous)", ours=True),
    Route(("DELETE",), "/train/", ADMIN, writes="stops training"),
    Route(("GET",), "/scoring/", ANNOTATOR, reads="scoring status"),
    Route(("POST",), "/scoring/{method}", ADMIN, SMALL, "datastore images", "SegU scores (image info)"),
    Route(("DELETE",), "/scoring/", ADMIN, writes="stops scoring"),
    Route(("GET",), "/model/{model}", ADMIN, reads="a model's weight file"),
    Route(("GET",), "/model/info/{model}", ADMIN, reads="a model's weight file checksum"),
    Route(("GET",), "/logs/", ADMIN, reads="the server log"),
    Route(("GET",), "/logs/gpu", ADMIN, reads="nvidia-smi"),
    Route(("GET",), "/favicon.ico", NONE, reads="MONAI Label's icon"),
    # MONAI Label's, removed
    _removed("GET", "/", "Swagger UI (scripts from a CDN): the API is documented in README.md and docs/SECURITY.md"),
    _removed("GET HEAD", "/docs", "ReDoc (scripts from a CDN): see README.md"),
    _removed("GET HEAD", "/openapi.json", "describes every stock route, removed ones too"),
    _removed("GET HEAD", "/static/{path:path}", "static files of the bundled OHIF, which needs the removed DICOM proxy"),
    _removed("GET", "/ohif/{path:path}", "the bundled OHIF reads the PACS through the removed DICOM proxy"),
    _removed("POST", "/reload", "rebuilds the app inside the running server (leaks threads): restart the server"),
    _removed("PUT", "/model/{model}", "writes into the model folder: weights come from training or the admin's files"),
    _removed("DELETE", "/model/{model}", "deletes from the model folder"),
    _removed("POST", "/infer/wsi/{model}", "whole-slide inference: no SegX task is a WSI task"),
    _removed("POST", "/infer/wsi_v2/{model}", "takes the image path and label writes from its params, on the event loop"),
    _removed("GET", "/batch/infer", "batch inference passes params that save labels; use `segx explain-batch` on an archive"),
    _removed("POST", "/batch/infer/{model}", "batch inference passes params that save labels; use `segx explain-batch`"),
    _removed("DELETE", "/batch/infer", "batch inference is not offered"),
    _removed("POST", "/train/", "deprecated: POST /train/{model}"),
    _removed("POST", "/scoring/", "deprecated: POST /scoring/{method}"),
    _removed("DELETE", "/datastore/", "deprecated: DELETE /datastore/image"),
    _removed("PUT", "/datastore/updatelabelinfo", "deprecated: PUT /datastore/label/info"),
    _removed("GET POST", "/proxy/dicom/{path:path}", "forwards with the server's PACS credentials: viewers read the PACS directly"),
    _removed("GET POST", "/proxy/dicom/wado/{path:path}", "forwards with the server's PACS credentials"),
    _removed("GET POST", "/proxy/dicom/qido/{path:path}", "forwards with the server's PACS credentials"),
    _removed("GET POST", "/proxy/dicom/stow/{path:path}", "writes into the PACS with the server's credentials"),
    _removed("GET", "/auth/", "MONAI Label's OAuth (MONAI_LABEL_AUTH_ENABLE) refuses valid RS256 tokens: API tokens instead"),
    _removed("POST", "/auth/token", "MONAI Label's OAuth: API tokens instead"),
    _removed("GET", "/auth/token/valid", "MONAI Label's OAuth: API tokens instead"),
)  # fmt: skip


#: Each entry with its path as a regular expression (compiled once: every request is looked up).
_PATTERNS = tuple((route, compile_path(route.path)[0]) for route in TABLE)


def lookup(method: str, path: str) -> tuple[Route | None, dict, bool]:
    """The table entry for a request, its path parameters, and whether the path is known
    under another method (405 rather than 404). A path that differs from an entry only by
    a trailing ``/`` matches it (the application redirects)."""
    other_method = False
    candidates = (path, path.rstrip("/") if path.endswith("/") and path != "/" else path + "/")
    for route, pattern in _PATTERNS:
        for candidate in candidates:
            match = pattern.match(candidate)
            if match:
                if method in route.methods:
                    return route, match.groupdict(), False
                other_method = True
    return None, {}, other_method


def served_routes(fastapi_app) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route ``fastapi_app`` serves: its own routes,
    mounts (as ``{path:path}`` under the mount) and every route of the routers it includes
    (FastAPI keeps included routers by reference, ``_IncludedRouter``; older FastAPI copies
    their routes into ``app.routes``)."""
    served: set[tuple[str, str]] = set()
    for route in fastapi_app.routes:
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for context in contexts:
            methods = getattr(context, "methods", None)
            if methods is None and hasattr(context, "routes"):  # a Mount: any method, any sub-path
                served |= {(m, f"{context.path}/{{path:path}}") for m in ("GET", "HEAD")}
                continue
            served |= {(m, context.path) for m in methods or ()}
    return served


def unclassified(fastapi_app) -> set[tuple[str, str]]:
    """Served routes with no entry in :data:`TABLE` (the gate answers them 404)."""
    table = {(m, r.path) for r in TABLE for m in r.methods}
    return {(m, p) for m, p in served_routes(fastapi_app) if (m, p) not in table and not (m == "HEAD" and ("GET", p) in table)}


def markdown() -> str:
    """The table as Markdown (docs/SECURITY.md)."""
    rows = ["| method | route | role | body | handler | reads | writes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for route in TABLE:
        reads = f"*removed*: {route.reads}" if route.role == REMOVED else route.reads
        handler = "" if route.role == REMOVED else ("ours" if route.ours else "MONAI Label")
        rows.append(f"| {' '.join(route.methods)} | `{route.path}` | {route.role} | {route.body} | {handler} | {reads} | {route.writes} |")
    return "\n".join(rows)


def write_into(document) -> None:
    """Replace the table between ``<!-- route-table ...-->`` and ``<!-- /route-table -->``
    in ``document`` (docs/SECURITY.md) with :func:`markdown`."""
    from pathlib import Path

    text = Path(document).read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- route-table")) + 1
    Path(document).write_text(text[:start] + markdown() + "\n" + text[text.index("<!-- /route-table -->") :], encoding="utf-8")


if __name__ == "__main__":  # python -m lib.routes (in monailabel_app/): rewrite the table in docs/SECURITY.md
    from pathlib import Path

    write_into(Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md")
