"""A better ``POST /infer/{model}`` for the running MONAI Label server.

The stock endpoint is an ``async`` function running synchronous inference, so one
inference blocks every other request (``/info``, datastore); and it answers bad input
with HTTP 500. Ours is a plain function (FastAPI runs it in its thread pool, so the event
loop keeps serving) and answers 404 for unknown or unavailable models, 413 for uploads
over the size limit, 404 for an unknown or expired session (clients upload again) and 400
with the reason for bad input. It reuses MONAI Label's own
request handling (``run_inference``) for everything else.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelException

logger = logging.getLogger(__name__)


def _upload_size(upload: UploadFile) -> int:
    if upload.size is not None:
        return upload.size
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


def install_infer_route(segx_app, max_upload_bytes: int) -> None:
    """Replace the stock ``POST /infer/{model}`` route in MONAI Label's infer router
    (idempotent; the router is shared by the FastAPI app that includes it).

    Args:
        segx_app: the running ``SegXApp`` (its infer tasks and unavailable models).
        max_upload_bytes: larger uploads are refused with 413.
    """
    router = stock_infer.router
    path = f"{router.prefix}/{{model}}"
    for route in [r for r in router.routes if getattr(r, "path", None) == path and "POST" in r.methods]:
        router.routes.remove(route)

    def segx_run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        if model not in segx_app.infer_tasks():
            config_name = model.rsplit("_", 1)[0]  # NAME_segx -> NAME
            reason = segx_app.unavailable.get(config_name) or f"unknown model {model!r}; available: {sorted(segx_app.infer_tasks())}"
            raise HTTPException(status_code=404, detail=reason)
        if not file and not image and not session_id:
            raise HTTPException(status_code=400, detail="send an image file or the id of an image in the datastore")
        if session_id and segx_app.sessions() is not None and segx_app.sessions().get_session(session_id) is None:
            raise HTTPException(status_code=404, detail=f"session {session_id!r} is not known or has expired: upload the image again")
        if image and not file and not session_id and image not in segx_app.datastore().list_images():
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        for upload in (file, label):
            if upload and _upload_size(upload) > max_upload_bytes:
                raise HTTPException(
                    status_code=413,
                    detail=f"upload {upload.filename!r} exceeds the limit of {max_upload_bytes / 2**20:g} MiB "
                    "(set it with --conf max_upload_mb N)",
                )
            if upload and _upload_size(upload) == 0:
                raise HTTPException(status_code=400, detail=f"upload {upload.filename!r} is empty")
        try:
            return run_inference(background_tasks, model, image, session_id, params, file, label, output)
        except (ValueError, MONAILabelException) as error:
            message = getattr(error, "msg", None) or str(error)
            logger.warning(f"infer {model}: bad request: {message}")
            raise HTTPException(status_code=400, detail=message) from error

    router.add_api_route("/{model}", segx_run_inference, methods=["POST"], summary="Run inference (threaded, 4xx on bad input)")
