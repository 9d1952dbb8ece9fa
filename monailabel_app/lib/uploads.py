"""Our handlers of the routes that take files (sessions, datastore images and labels), in
place of MONAI Label's: every file through :func:`lib.ingest.receive`, labels checked
against their image (:mod:`lib.labels`), sessions owned by the user who made them. A
label's ``params`` may carry ``image_label`` (the image's class, for the classifier
trainers) and ``label_info`` (segment names); nothing else of them is stored.

MONAI Label's own handlers unpack archives with ``shutil.unpack_archive`` (members may
name any path), copy uploads under the client's file name, give sessions ``uuid1`` ids
(a timestamp) that anyone may read or delete, answer with server paths, and store labels
of any shape or value with the client's ``params`` (``user`` included) as label info.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from pathlib import Path
from typing import List

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import session as stock_session
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag

from . import ingest
from .labels import check_label
from .security import check_name, is_plain_name, params_object, public, request_user

logger = logging.getLogger(__name__)

#: Sessions one user may hold; a new one beyond it replaces that user's oldest.
MAX_SESSIONS_PER_USER = 8


def replace_route(router, path: str, method: str, endpoint, summary: str) -> None:
    """Put ``endpoint`` in place of ``router``'s ``method path`` route (idempotent: the
    router is MONAI Label's, shared by the FastAPI app that includes it)."""
    full = f"{router.prefix}{path}"
    for route in [r for r in router.routes if getattr(r, "path", None) == full and method in r.methods]:
        router.routes.remove(route)
    router.add_api_route(path, endpoint, methods=[method], summary=summary)


def received(uploads: list, max_bytes: int, max_voxels: int, archives: bool = True):
    """``(working folder, checked image path)`` of :func:`lib.ingest.receive`; the caller
    removes the folder. ``Refused`` becomes its HTTP answer."""
    workdir = Path(tempfile.mkdtemp(prefix="segx-upload-"))
    try:
        return workdir, ingest.receive(uploads, workdir, max_bytes, max_voxels, archives)
    except ingest.Refused as error:
        ingest.remove(workdir)
        raise HTTPException(status_code=error.status, detail=str(error)) from None
    except BaseException:
        ingest.remove(workdir)
        raise


def _session_reply(session_id: str, info) -> dict:
    """What a client learns of a session: its id and times (no server path)."""
    return {"session_id": session_id, "session_info": {"name": session_id, "create_ts": info.create_ts, "last_access_ts": info.last_access_ts, "expiry": info.expiry}}


def owned_session(segx_app, session_id: str, user: str):
    """The session ``session_id`` if ``user`` made it and it has not expired, else 404 (the
    same answer whether it exists or not)."""
    sessions = segx_app.sessions()
    info = sessions.get_session(session_id, update_ts=False) if sessions is not None else None
    if info is not None and info.last_access_ts + info.expiry < time.time():
        sessions.remove_session(session_id)
        info = None
    if info is None or info.meta.get("owner") != user:
        raise HTTPException(status_code=404, detail=f"session {session_id!r} is not known or has expired: upload the image again")
    return info


def install_upload_routes(segx_app, max_upload_bytes: int, max_voxels: int, label_values) -> None:
    """Our ``PUT/GET/DELETE /session/...``, ``PUT /datastore/image`` and ``PUT
    /datastore/label`` (see the module docstring).

    Args:
        label_values: ``callable() -> set[int]``, the label values the segmenters know.
    """

    def create_session(request: Request, expiry: int = 0, uncompress: bool = False, files: List[UploadFile] = File(...),
                       user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):  # fmt: skip
        sessions = segx_app.sessions()
        if sessions is None:
            raise HTTPException(status_code=406, detail="sessions are not enabled on this server")
        owner = request_user(request)
        workdir, image = received(files, max_upload_bytes, max_voxels)
        try:
            mine = sorted((info.create_ts, sid) for sid, info in _all_sessions(sessions).items() if info.meta.get("owner") == owner)
            for _, oldest in mine[: max(0, len(mine) - MAX_SESSIONS_PER_USER + 1)]:
                sessions.remove_session(oldest)
            session_id = secrets.token_hex(16)
            session_id, info = sessions.add_session(str(image), max(0, int(expiry)), False, session_id)
            info.meta["owner"] = owner
            sessions._write_meta_info(session_id, info)  # MONAI Label's own meta file
        finally:
            ingest.remove(workdir)
        return _session_reply(session_id, info)

    def get_session(request: Request, session_id: str, image: bool = False, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        info = owned_session(segx_app, session_id, request_user(request))
        if image:
            if Path(info.image).is_dir():
                raise HTTPException(status_code=400, detail="this session holds a DICOM series: it cannot be sent as one file")
            return FileResponse(info.image, filename="session" + "".join(Path(info.image).suffixes[-2:]))
        return _session_reply(session_id, info)

    def remove_session(request: Request, session_id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        owned_session(segx_app, session_id, request_user(request))
        segx_app.sessions().remove_session(session_id)
        return {"session_id": session_id}

    def add_image(request: Request, image: str = "", file: UploadFile = File(...), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        image_id = check_name("image", image or _stem(file.filename or ""))
        workdir, path = received([file], max_upload_bytes, max_voxels, archives=False)
        try:
            return {"image": segx_app.datastore().add_image(image_id, str(path), {"user": request_user(request)})}
        finally:
            ingest.remove(workdir)

    def save_label(background_tasks: BackgroundTasks, request: Request, image: str, params: str = Form("{}"), tag: str = DefaultLabelTag.FINAL.value,
                   label: UploadFile = File(...), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):  # fmt: skip
        datastore = segx_app.datastore()
        if image not in datastore.list_images():
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        info = _label_info(params)
        image_label = _image_label(params)
        workdir, path = received([label], max_upload_bytes, max_voxels, archives=False)
        try:
            try:
                check_label(path, Path(datastore.get_image_uri(image)), set(label_values()), Path(label.filename or "label").name[-80:])
            except ValueError as error:
                raise HTTPException(status_code=400, detail=public(str(error))) from None
            label_id = datastore.save_label(image, str(path), tag or DefaultLabelTag.FINAL.value, {**info, "user": request_user(request)})
            if image_label is not None:
                datastore.update_image_info(image, {"label": image_label})  # what the classifier trainers learn from
        finally:
            ingest.remove(workdir)
        reply = segx_app.on_save_label(image, label_id) or {}
        return {**reply, "image": image, "label": label_id}

    replace_route(stock_session.router, "/", "PUT", create_session, "New session: one checked image (or a DICOM series archive), owned by the caller")
    replace_route(stock_session.router, "/{session_id}", "GET", get_session, "The caller's session")
    replace_route(stock_session.router, "/{session_id}", "DELETE", remove_session, "Remove the caller's session")
    replace_route(stock_datastore.router, "/image", "PUT", add_image, "Add a checked image (admin)")
    replace_route(stock_datastore.router, "/", "PUT", add_image, "Add a checked image (admin; the official MONAILabelClient.upload_image calls this)")
    replace_route(stock_datastore.router, "/label", "PUT", save_label, "Save a label checked against its image")


def _all_sessions(sessions) -> dict:
    """Every stored session (MONAI Label keeps one folder each under its store path)."""
    store = Path(sessions.store_path)
    found = {}
    for folder in store.iterdir() if store.is_dir() else ():
        info = sessions.get_session(folder.name, update_ts=False)
        if info is not None:
            found[folder.name] = info
    return found


def _stem(filename: str) -> str:
    name = Path(filename).name
    suffix = ingest.suffix_of(name, ingest.IMAGE_SUFFIXES) or ""
    return name[: len(name) - len(suffix)]


def _image_label(params: str) -> str | None:
    """``image_label``: the annotator's class of the whole image (a plain name), stored as
    the image info ``label`` that the classifier trainers read; None when not given."""
    value = params_object(params).get("image_label")
    if value is not None and not (isinstance(value, str) and len(value) <= 64 and is_plain_name(value)):
        raise HTTPException(status_code=400, detail="image_label must be a class name (letters, digits, spaces, '.', '_', '-'; at most 64)")
    return value


def _label_info(params: str) -> dict:
    """The label info a client may set: ``label_info`` (segment names and values, as the
    MONAI Label Slicer plugin sends them); the rest is the server's to write."""
    given = params_object(params)
    segments = given.get("label_info")
    if segments is None:
        return {}
    if not isinstance(segments, list) or len(segments) > 256 or not all(isinstance(s, dict) and set(s) <= {"name", "idx", "color"} for s in segments):
        raise HTTPException(status_code=400, detail="label_info must be a list of {name, idx, color} entries")
    return {"label_info": segments}
