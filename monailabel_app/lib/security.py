"""The server's gate: which names a request may use, who may call which route, and what
an answer may reveal.

Every MONAI Label route, stock and ours, depends on ``RBAC(...)``, which depends on
``get_current_user`` (``monailabel/endpoints/user/auth.py``). Overriding that one dependency
on the FastAPI app (:func:`install_gate`) puts a single check in front of every route:

1. **Names, not paths**: every id a route takes in its path or query (``image``, ``id``,
   ``label``, ``tag``, ``session_id``, ``model``, ``strategy`` ...) must be a plain name
   (letters, digits, spaces, ``.``, ``_``, ``-``; no ``..``; at most 200 characters), else 400. The
   stock datastore routes join them into file paths (``PUT /datastore/label?tag=../../x``
   wrote outside the studies folder).
2. **Tokens and roles** (when ``--conf tokens_file`` names a token file): a bearer token
   is required (401) and its role must allow the route (403). Annotators may read, infer,
   take the next sample and save labels; only admins train, delete, add images, run batch
   inference or scoring, change models, download the dataset and read the logs. MONAI
   Label 0.8.5's own OAuth (``MONAI_LABEL_AUTH_ENABLE``) refuses correctly signed RS256
   tokens with PyJWT 2.x (it passes no ``algorithms``), so the app uses its own API tokens;
   the file holds only their SHA-256 digests (``segx token`` makes them).
"""

from __future__ import annotations

import logging
import re

from fastapi import HTTPException, Request

from segx.tokens import ADMIN, ANNOTATOR, Tokens

logger = logging.getLogger(__name__)

#: A plain name: what ids, tags, model and session names must look like.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ -]{0,199}$")

#: Path and query parameters that name datastore objects, models or sessions.
NAME_PARAMETERS = ("image", "id", "label", "tag", "session_id", "model", "strategy", "trainer", "method", "name")

#: Routes only admins may call: (HTTP method, path prefix).
ADMIN_ROUTES = (
    ("POST", "/train"), ("DELETE", "/train"),
    ("PUT", "/datastore/image"), ("DELETE", "/datastore"), ("GET", "/datastore/dataset"),
    ("POST", "/batch"), ("DELETE", "/batch"), ("POST", "/scoring"), ("DELETE", "/scoring"),
    ("GET", "/logs"), ("PUT", "/model"), ("DELETE", "/model"),
)  # fmt: skip

#: An absolute path in a message (POSIX or Windows).
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:\\|/)(?:[^\s'\"/\\,;:)\]]+[/\\])+([^\s'\",;:)\]]*)")


def public(message: str) -> str:
    """``message`` without absolute paths (each replaced by its file name): safe to send
    to a client."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "<folder>", message)


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a plain name, else HTTP 400."""
    if not NAME.match(value) or ".." in value:
        raise HTTPException(status_code=400, detail=f"invalid {kind} {value[:80]!r}: use letters, digits, spaces, '.', '_' and '-' only")
    return value


def required_role(method: str, path: str) -> str:
    """The role a route needs (admins may call every route)."""
    return ADMIN if any(method == m and path.startswith(prefix) for m, prefix in ADMIN_ROUTES) else ANNOTATOR


def install_gate(fastapi_app, tokens: Tokens | None) -> None:
    """Put the gate in front of every route of ``fastapi_app`` (see the module docstring)."""
    from monailabel.endpoints.user.auth import DEFAULT_USER, get_current_user

    def gate(request: Request):
        for source in (request.path_params, request.query_params):
            for key in NAME_PARAMETERS:
                if key in source and source[key] != "":
                    check_name(key, str(source[key]))
        if tokens is None:
            return DEFAULT_USER
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        role = tokens.role_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if role is None:
            raise HTTPException(status_code=401, detail="a valid API token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        path = request.url.path.rstrip("/") or "/"
        needed = required_role(request.method, path)
        if needed == ADMIN and role != ADMIN:
            raise HTTPException(status_code=403, detail=f"{request.method} {path} needs the admin role")
        return DEFAULT_USER  # every MONAI Label role: the gate has decided

    fastapi_app.dependency_overrides[get_current_user] = gate
