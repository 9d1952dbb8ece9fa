"""The server's gate: one ASGI layer in front of the whole application that decides every
request before MONAI Label or our handlers see a byte of its body.

In this order (``docs/SECURITY.md`` gives the threat model):

1. **Host**: the ``Host`` header must be an IP address, this computer's name, ``localhost``
   or a name in ``--conf allowed_hosts`` (else 400): a web page cannot reach a server on
   the clinician's computer through a DNS name of its own (DNS rebinding).
2. **Origin**: a request from a browser page of another site (an ``Origin`` header that is
   neither this server nor in ``--conf cors_origins``) is refused (403), preflights too;
   MONAI Label's CORS layer (which echoes any origin, with credentials) only ever sees
   allowed origins.
3. **The route table** (:mod:`lib.routes`): a request that matches no entry, or a removed
   one, is answered 404 (405 for a known path under another method).
4. **Tokens and roles** (with ``--conf tokens_file``): a bearer token is required (401) and
   its role must be the route's (403), checked on the headers, before the body is read.
   Routes answer as the token's user (label info names who saved it).
5. **Names, not paths**: ids in the path or query (``image``, ``label``, ``tag``,
   ``session_id``, ``model`` ...) must be plain names (400).
6. **Body size**: ``Content-Length`` over the route's limit is a 413 at once; a body that
   streams past it is cut off and answered 413 (nothing is spooled beyond the limit).
7. **Answers**: JSON and text answers have every server folder (studies, app, sessions,
   temporary folder, home) replaced by a placeholder.

MONAI Label 0.8.5's own OAuth (``MONAI_LABEL_AUTH_ENABLE``) refuses correctly signed RS256
tokens with PyJWT 2.x (it passes no ``algorithms``), so the app uses its own API tokens;
the token file holds only their SHA-256 digests (``lib/tokens.py`` makes them).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from urllib.parse import parse_qsl, urlsplit

from fastapi import HTTPException, Request

from lib.tokens import ADMIN, Tokens

from . import routes

logger = logging.getLogger(__name__)

#: A plain name: what ids, tags, model and session names must look like.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ -]{0,199}$")

#: Path and query parameters that name datastore objects, models or sessions.
NAME_PARAMETERS = ("image", "id", "label", "tag", "session_id", "model", "strategy", "trainer", "method", "name")

#: Multipart framing allowed above an upload limit (boundaries, part headers, params).
MULTIPART_OVERHEAD = 1 << 20

#: An absolute path in a message (POSIX or Windows).
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:\\|/)(?:[^\s'\"/\\,;:)\]]+[/\\])+([^\s'\",;:)\]]*)")

#: Host names that are this computer.
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def public(message: str) -> str:
    """``message`` without absolute paths (each replaced by its file name): safe to send
    to a client."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "<folder>", message)


def is_plain_name(value) -> bool:
    """Whether ``value`` is a string matching :data:`NAME` without ``..``."""
    return isinstance(value, str) and bool(NAME.match(value)) and ".." not in value


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a plain name, else HTTP 400."""
    if not is_plain_name(value):
        raise HTTPException(status_code=400, detail=f"invalid {kind} {value[:80]!r}: use letters, digits, spaces, '.', '_' and '-' only")
    return value


def params_object(params: str) -> dict:
    """A request's ``params`` form field (JSON) as a dict, else HTTP 400."""
    try:
        given = json.loads(params) if params else {}
    except ValueError:
        raise HTTPException(status_code=400, detail="params is not JSON") from None
    if not isinstance(given, dict):
        raise HTTPException(status_code=400, detail="params must be a JSON object")
    return given


def _check(describe: str, test):
    """A value check for :func:`checked_params`: ``test(value) -> bool``, described for messages."""
    test.describe = describe
    return test


def _number(low: float, high: float, whole: bool = False):
    """A JSON number (an integer when ``whole``, never a bool) in [low, high] (NaN and
    infinities fail the comparison)."""
    kinds = (int,) if whole else (int, float)
    return _check(f"{'an integer' if whole else 'a number'} from {low:g} to {high:g}",
                  lambda value: isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high)  # fmt: skip


_plain_name = _check("a plain name (letters, digits, spaces, '.', '_', '-')", is_plain_name)
_text = _check("a string", lambda value: isinstance(value, str))

#: Training params an admin may set (``POST /train/{model}``): MONAI Label's trainers also
#: take ``name`` (the output folder), ``train_ds``/``val_ds`` (datalist files),
#: ``distributed_url``, ``tracking_uri`` ... which name paths and URLs on the server.
#: ``client_id``: the official client adds it to every request it makes with one.
TRAIN_PARAMS = {"max_epochs": _number(1, 10000, whole=True), "learning_rate": _number(1e-8, 1.0), "val_split": _number(0.0, 0.9),
                "train_batch_size": _number(1, 1024, whole=True), "client_id": _plain_name}  # fmt: skip
#: Params of ``POST /activelearning/{strategy}`` (others are dropped): what SegU-first reads.
SAMPLE_PARAMS = {"model": _plain_name, "client_id": _plain_name, "release": _plain_name}
#: Params of ``POST /infer/{model}`` (others are dropped, above all those with which MONAI
#: Label's own pipeline reads or writes files: ``image``, ``label``, ``save_label``,
#: ``label_tag``, ``session``, ``device`` ...): what the SegX tasks read (``lib.infers.tasks``).
INFER_PARAMS = {
    "class": _check("a class name or index", lambda value: isinstance(value, (str, int)) and not isinstance(value, bool)),
    "method": _text, "variant": _text, "layer": _text, "result_extension": _text,
    "margin_mm": _number(0, 100),
    "store_dicom": _check("true or false", lambda value: isinstance(value, bool)),
}  # fmt: skip


def checked_params(given, allowed: dict, what: str, strict: bool) -> dict:
    """``given`` (a JSON object or None) reduced to the keys of ``allowed`` (name -> check);
    HTTP 400 for a value that fails its check, and for other keys when ``strict`` (else
    they are dropped)."""
    given = given or {}
    if not isinstance(given, dict):
        raise HTTPException(status_code=400, detail=f"{what} params must be a JSON object")
    given = {key: value for key, value in given.items() if value is not None}  # MONAI Label's client sends client_id: null
    unknown = sorted(set(given) - set(allowed))
    if unknown and strict:
        raise HTTPException(status_code=400, detail=f"{what} does not take {unknown[:10]}; it takes {sorted(allowed)}")
    if unknown:
        logger.warning(f"{what}: ignoring params {unknown[:10]}")
    for key, check in allowed.items():
        if key in given and not check(given[key]):
            raise HTTPException(status_code=400, detail=f"{what}: {key} must be {check.describe}, got {str(given[key])[:80]!r}")
    return {key: given[key] for key in allowed if key in given}


def _split_list(value) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in str(value or "").split(",") if item.strip())


def _host_name(host: str) -> str:
    """``host[:port]`` -> host, lower case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Redactor:
    """Replaces server folders in answer text by placeholders (longest folder first)."""

    def __init__(self, folders: dict[str, str]):
        pairs = []
        for placeholder, folder in folders.items():
            if folder and len(folder) > 1:
                for form in {str(folder).rstrip("/"), os.path.realpath(folder).rstrip("/")}:
                    pairs.append((form.encode(), f"<{placeholder}>".encode()))
        self.pairs = sorted(pairs, key=lambda pair: -len(pair[0]))

    def __call__(self, body: bytes) -> bytes:
        for folder, placeholder in self.pairs:
            body = body.replace(folder, placeholder)
        return body


class Gate:
    """The ASGI layer described in the module docstring, around ``app``.

    Args:
        app: the ASGI application (MONAI Label's middleware stack).
        tokens: API tokens, or ``None`` (no tokens: every table route is open to whoever
            reaches the port; bind to loopback).
        max_upload_bytes: the largest upload (image, label, archive) of an UPLOAD route.
        allowed_hosts: extra ``Host`` names (``*``: any).
        cors_origins: other sites whose pages may call the server (``scheme://host[:port]``).
        folders: placeholder -> server folder, redacted from answers.
    """

    def __init__(self, app, tokens: Tokens | None, max_upload_bytes: int, allowed_hosts=(), cors_origins=(), folders=None):
        self.app, self.tokens, self.max_upload_bytes = app, tokens, max_upload_bytes
        self.allowed_hosts = set(LOOPBACK_NAMES) | set(allowed_hosts) | {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.cors_origins = {origin.rstrip("/") for origin in cors_origins}
        self.redact = Redactor(folders or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websocket route is offered
            return await send({"type": "websocket.close", "code": 1008})
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        try:
            route = self._decide(scope, headers)
        except HTTPException as refusal:
            return await _answer(send, refusal.status_code, refusal.detail, refusal.headers)
        if route is None:  # an allowed CORS preflight: MONAI Label's CORS layer answers it
            return await self.app(scope, receive, send)
        limit = {routes.NO_BODY: routes.NO_BODY_BYTES, routes.SMALL: routes.SMALL_BODY_BYTES}.get(route.body, self.max_upload_bytes + MULTIPART_OVERHEAD)
        declared = headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > max(limit, 0)):
            return await _answer(send, 413, _too_large(limit, route))
        await self._forward(scope, receive, send, limit, route)

    def _decide(self, scope, headers: dict) -> routes.Route | None:
        """The table entry of an acceptable request (``None`` for an allowed CORS preflight);
        raises the refusal."""
        host = _host_name(headers.get("host", ""))
        if "*" not in self.allowed_hosts and not (_is_ip(host) or host in self.allowed_hosts):
            raise HTTPException(400, f"host {host[:80]!r} is not served here (allow it with --conf allowed_hosts)")
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, headers.get("host", "")):
            raise HTTPException(403, "requests from other web sites are refused (allow a site with --conf cors_origins)")
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            return None
        route, path_params, other_method = routes.lookup(method, path)
        if route is None or route.role == routes.REMOVED:
            raise HTTPException(405 if other_method and route is None else 404, f"{method} {path[:120]} is not served")
        user = self._user(route, method, headers)
        scope["segx.user"] = user
        for key, value in list(path_params.items()) + parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            if key in NAME_PARAMETERS and value != "":
                check_name(key, value)
        return route

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return bool(parts.netloc) and parts.netloc == host.strip().lower()

    def _user(self, route: routes.Route, method: str, headers: dict) -> str:
        """The caller's user name (``admin`` without tokens, as MONAI Label's default user);
        raises 401/403."""
        if self.tokens is None:
            return "admin"
        scheme, _, token = headers.get("authorization", "").partition(" ")
        entry = self.tokens.entry_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if route.role == routes.NONE:
            return entry["name"] if entry else "anonymous"
        if entry is None:
            raise HTTPException(401, "a valid API token is required (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        if route.role == ADMIN and entry["role"] != ADMIN:
            raise HTTPException(403, f"{method} {route.path} needs the admin role")
        return entry["name"]

    async def _forward(self, scope, receive, send, limit: int, route: routes.Route) -> None:
        """Run the application with the body cut off at ``limit`` bytes and answers redacted."""
        state = {"received": 0, "over": False, "started": False, "redact": False, "status": 200, "headers": [], "body": []}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def filtered_send(message):
            if state["over"]:
                return
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"").decode("latin-1")
                state["redact"] = content_type.startswith(("application/json", "text/"))
                if not state["redact"]:
                    state["started"] = True
                    return await send(message)
                state["status"], state["headers"] = message["status"], message.get("headers", [])
                return None
            if message["type"] == "http.response.body" and state["redact"]:
                state["body"].append(message.get("body", b""))  # sent once the app has returned
                return None
            return await send(message)

        try:
            await self.app(scope, limited_receive, filtered_send)
        except _BodyTooLarge:
            pass
        except Exception as error:  # a handler failed: its 500 page is buffered (text), not sent
            if not state["over"]:
                status, detail = _failure(error)
                if status >= 500 or state["started"]:
                    logger.exception(f"{scope['method']} {scope['path']} failed")
                return None if state["started"] else await _answer(send, status, detail)
        if state["over"] and not state["started"]:
            return await _answer(send, 413, _too_large(limit, route))
        if state["redact"]:
            body = self.redact(b"".join(state["body"]))
            headers = [(k, v) for k, v in state["headers"] if k.lower() != b"content-length"]
            await send({"type": "http.response.start", "status": state["status"], "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def _failure(error: Exception) -> tuple[int, str]:
    """The answer to an exception a route let through (MONAI Label's routes answer unknown
    ids with an exception, hence a 500): not-found -> 404, invalid input -> 400, anything
    else a 500 that names no file and carries no trace."""
    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelError, MONAILabelException

    if isinstance(error, (ImageNotFoundException, LabelNotFoundException, FileNotFoundError)):
        return 404, public(str(getattr(error, "msg", None) or "not found"))
    if isinstance(error, MONAILabelException) and error.error == MONAILabelError.INVALID_INPUT:
        return 400, public(str(error.msg))
    if isinstance(error, AssertionError) and _raised_in_monailabel(error):  # its routes assert their preconditions
        return 400, public(str(error))
    return 500, "internal error: the server log has the details"


def _raised_in_monailabel(error: Exception) -> bool:
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}monailabel{os.sep}" in frames[-1].filename


class _BodyTooLarge(Exception):
    """A request body streamed past its route's limit."""


def _too_large(limit: int, route: routes.Route) -> str:
    if route.body == routes.UPLOAD:
        return f"the upload exceeds the limit of {(limit - MULTIPART_OVERHEAD) / 2**20:g} MiB (set it with --conf max_upload_mb N)"
    return f"{route.path} takes a request body of at most {limit:,} bytes"


async def _answer(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def request_user(request: Request) -> str:
    """The user name the gate decided for this request."""
    return request.scope.get("segx.user", "admin")


def install_gate(fastapi_app, tokens: Tokens | None, conf: dict, max_upload_bytes: int, folders: dict[str, str]) -> Gate:
    """Put the gate in front of ``fastapi_app`` (replacing an earlier one, so a rebuilt app
    does not stack gates) and make every route's ``get_current_user`` dependency answer with
    the gate's user; log served routes the table does not classify (the gate refuses them).

    ``conf`` keys: ``allowed_hosts``, ``cors_origins`` (comma-separated)."""
    from monailabel.endpoints.user.auth import DEFAULT_USER, User, get_current_user

    inner = fastapi_app.middleware_stack or fastapi_app.build_middleware_stack()
    inner = inner.app if isinstance(inner, Gate) else inner
    gate = Gate(inner, tokens, max_upload_bytes, _split_list(conf.get("allowed_hosts")), _split_list(conf.get("cors_origins")), folders)
    fastapi_app.middleware_stack = gate

    def current_user(request: Request) -> User:
        return User(username=request_user(request), roles=DEFAULT_USER.roles)  # the gate has decided the role

    fastapi_app.dependency_overrides[get_current_user] = current_user
    for method, path in sorted(routes.unclassified(fastapi_app)):
        logger.error(f"route {method} {path} is not in the route table (lib/routes.py): it is refused until classified")
    return gate
