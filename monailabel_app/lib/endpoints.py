"""A better ``POST /infer/{model}`` for the running MONAI Label server.

The stock endpoint is an ``async`` function running synchronous inference, so one
inference blocks every other request (``/info``, datastore); and it answers bad input
with HTTP 500. Ours is a plain function (FastAPI runs it in its thread pool, so the event
loop keeps serving) and answers 404 for unknown or unavailable models, 413 for uploads
over the size limit, 404 for an unknown or expired session (clients upload again) and 400
with the reason for bad input. The image comes only from the datastore id, the upload or
the session, never from the params: only the params the SegX tasks read are passed on. It reuses MONAI Label's own
request handling (``run_inference``) for everything else.
"""

from __future__ import annotations

import logging
from typing import Optional

import requests

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from monailabel.config import settings
from monailabel.endpoints import activelearning as stock_activelearning
from monailabel.endpoints import train as stock_train
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelException

from segx.headers import check_image_file

from . import ingest
from .dicomweb import SegXDicomWebDatastore
from .infers.runtime import ModelUnavailable
from .security import INFER_PARAMS, SAMPLE_PARAMS, TRAIN_PARAMS, checked_params, params_object, public, request_user
from .uploads import owned_session, received, replace_route

logger = logging.getLogger(__name__)


def _checked_params(params: str) -> dict:
    """The request's JSON params reduced to :data:`lib.security.INFER_PARAMS`, their types
    checked (HTTP 400 otherwise) before any work is done; empty values count as absent."""
    given = {key: value for key, value in params_object(params).items() if value != ""}
    return checked_params(given, INFER_PARAMS, "infer", strict=False)


def _store_dicom(segx_app, model: str, image_id: str, image_path: str, params: dict, result: dict) -> None:
    """With a DICOMweb datastore, store a SegX task's result in the PACS (SEG, Parametric
    Maps, SR in the source study; ``store_dicom: false`` skips it) and add their UIDs to
    the reply (``dicom``)."""
    datastore = segx_app.datastore()
    task = segx_app.infer_tasks()[model]
    if not isinstance(datastore, SegXDicomWebDatastore) or not hasattr(task, "dicom_objects") or not params.get("store_dicom", True):
        return
    uploads = []
    objects = task.dicom_objects({"image": image_path, **params}, datastore.series(image_id), sink=lambda ds: uploads.append(datastore.store(ds)))
    for upload in uploads:
        upload.result()
    reply = result.setdefault("params", {})
    reply["dicom"] = {
        "study": str(objects["seg"].StudyInstanceUID),
        **{name: {"series": str(o.SeriesInstanceUID), "instance": str(o.SOPInstanceUID)} for name, o in objects.items()},
    }


def install_infer_route(segx_app, max_upload_bytes: int, max_voxels: int) -> None:
    """Replace the stock ``POST /infer/{model}`` route in MONAI Label's infer router
    (idempotent; the router is shared by the FastAPI app that includes it).

    The route builds the inference request itself: the image is the upload (saved to a
    temporary file that is removed on every path), a MONAI Label session's file or a
    datastore image, its header is checked before any decoding, and the params are those
    of :func:`_checked_params`. MONAI Label's ``run_inference`` is not used: it takes the
    image path and label-saving options from the client's params.

    Args:
        segx_app: the running ``SegXApp`` (its infer tasks and unavailable models).
        max_upload_bytes: larger uploads are refused with 413.
        max_voxels: images with more voxels are refused with 413 before decoding.
    """

    def segx_run_inference(
        background_tasks: BackgroundTasks,
        request: Request,
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
            reason = public(segx_app.unavailable.get(config_name) or f"unknown model {model!r}; available: {sorted(segx_app.infer_tasks())}")
            raise HTTPException(status_code=404, detail=reason)
        if label:
            raise HTTPException(status_code=400, detail="the SegX tasks take no label upload")
        request_params = _checked_params(params)
        try:
            segx_app.infer_tasks()[model].check(request_params)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=public(str(error))) from error
        if session_id:
            session = owned_session(segx_app, session_id, request_user(request))
        elif image and not file:
            if image not in segx_app.datastore().list_images():
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        elif not file:
            raise HTTPException(status_code=400, detail="send an image file or the id of an image in the datastore")
        workdir, uploaded = received([file], max_upload_bytes, max_voxels) if file and not session_id else (None, None)
        try:
            image_path = str(uploaded) if uploaded else (session.image if session_id else segx_app.datastore().get_image_uri(image))
            if not uploaded:
                check_image_file(image_path, max_voxels)
            result = segx_app.infer({"model": model, "image": image_path, **request_params})
            if image and not uploaded and not session_id:
                _store_dicom(segx_app, model, image, image_path, request_params, result)
            return send_response(segx_app.datastore(), result, output, background_tasks)
        except ModelUnavailable as error:
            raise HTTPException(status_code=503, detail=str(error)) from error
        except requests.RequestException as error:  # the DICOMweb datastore's PACS
            status = getattr(error.response, "status_code", None)
            detail = f"the PACS answered HTTP {status}" if status else f"the PACS could not be reached ({type(error).__name__})"
            logger.error(f"infer {model}: {detail}: {public(str(error))}")
            raise HTTPException(status_code=502, detail=detail) from error
        except (ValueError, MONAILabelException) as error:
            message = public(getattr(error, "msg", None) or str(error))
            if uploaded:  # name the client's file, not our temporary one
                message = message.replace(uploaded.name, (file.filename or "upload").rsplit("/", 1)[-1][-80:])
            logger.warning(f"infer {model}: bad request: {message}")
            status = 413 if "over the limit" in message else 400
            raise HTTPException(status_code=status, detail=message) from error
        finally:
            if workdir:
                ingest.remove(workdir)

    replace_route(stock_infer.router, "/{model}", "POST", segx_run_inference, "Run inference (threaded, 4xx on bad input)")


def install_activelearning_route(segx_app) -> None:
    """Replace the stock ``POST /activelearning/{strategy}`` (an ``async`` function running
    the strategy, and with it any scoring, on the event loop, which blocked ``/info`` for
    16 s) by a plain function that FastAPI runs in its thread pool, with 404 for an unknown
    strategy and 400 for a bad request. MONAI Label's own ``sample`` does the rest
    (recording which client got the image); the reply names the image by its id only."""

    def segx_sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        if strategy not in segx_app._strategies:  # MONAI Label keeps them there
            raise HTTPException(status_code=404, detail=f"unknown strategy {strategy!r}; available: {sorted(segx_app._strategies)}")
        params = checked_params(params, SAMPLE_PARAMS, f"activelearning/{strategy}", strict=False)
        if segx_app.tokens is not None:  # each token's user is one annotator: holds are per user
            params["client_id"] = user.username
        try:
            chosen = stock_activelearning.sample(strategy, params, user.username)
            return {key: value for key, value in chosen.items() if key != "path"}
        except ValueError as error:
            raise HTTPException(status_code=400, detail=public(str(error))) from error

    replace_route(stock_activelearning.router, "/{strategy}", "POST", segx_sample, "Next sample (threaded, 4xx on bad input)")


def install_train_route(segx_app) -> None:
    """Replace the stock ``POST /train/{model}``: 404 for an unknown trainer, and of the
    params only :data:`lib.security.TRAIN_PARAMS`, checked (400 otherwise): MONAI Label's
    trainers also take keys that name server paths and URLs. MONAI Label's own
    ``run_model`` does the rest (one training at a time, 429 while one runs)."""

    def segx_train(model: str, params: Optional[dict] = None, run_sync: bool = False, enqueue: bool = False,
                   user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):  # fmt: skip
        if model not in segx_app._trainers:  # MONAI Label keeps them there
            raise HTTPException(status_code=404, detail=f"unknown trainer {model!r}; available: {sorted(segx_app._trainers)}")
        return stock_train.run_model(model, checked_params(params, TRAIN_PARAMS, f"train/{model}", strict=True), run_sync, enqueue)

    replace_route(stock_train.router, "/{model}", "POST", segx_train, "Train one model (admin; checked params)")
