"""API tokens of the SegX server: random tokens given to people, of which the server keeps
only SHA-256 digests, each with a role (``admin`` or ``annotator``).

    python monailabel_app/lib/tokens.py --file tokens.json --name alice --role annotator   # prints the token once
    monailabel start_server ... --conf tokens_file tokens.json

Server-only code: it lives in the server app, not in the ``segx`` core.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

ADMIN, ANNOTATOR = "admin", "annotator"
ROLES = (ADMIN, ANNOTATOR)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """API tokens from a JSON file ``{"tokens": [{"name", "role", "sha256"}]}``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        entries = json.loads(self.path.read_text())["tokens"] if self.path.exists() else []
        for entry in entries:
            if entry.get("role") not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
                raise ValueError(f"{self.path.name}: each token needs a role in {ROLES} and a sha256 digest; got {entry.get('name')!r}")
        self.entries = entries

    def entry_of(self, token: str) -> dict | None:
        """``{"name", "role", "sha256"}`` of ``token``, or ``None`` (constant-time comparison)."""
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry["sha256"], digest(token)):
                found = entry
        return found

    def add(self, name: str, role: str) -> str:
        """Make a new token for ``name`` with ``role``, store its digest, return it (shown
        once: only the digest is kept)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        token = secrets.token_urlsafe(32)
        self.entries.append({"name": name, "role": role, "sha256": digest(token)})
        self.path.write_text(json.dumps({"tokens": self.entries}, indent=2))
        self.path.chmod(0o600)
        return token


def main(argv: list[str] | None = None) -> int:
    """Make one API token (the server's ``--conf tokens_file``)."""
    import argparse

    parser = argparse.ArgumentParser(description="Make an API token for the SegX server (--conf tokens_file FILE)")
    parser.add_argument("--file", required=True, help="token file (JSON; created if missing; only digests are stored)")
    parser.add_argument("--name", required=True, help="who the token is for")
    parser.add_argument("--role", required=True, choices=ROLES, help="annotator: read, infer, next sample, save labels; admin: everything")
    args = parser.parse_args(argv)
    token = Tokens(Path(args.file)).add(args.name, args.role)
    print(f"API token for {args.name} ({args.role}), shown once; {args.file} keeps only its SHA-256 digest:")
    print(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
