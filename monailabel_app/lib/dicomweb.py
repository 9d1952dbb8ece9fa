"""A PACS as the datastore: MONAI Label's DICOMweb datastore, with series checked before
they are explained and SegX results stored back as DICOM (SEG, Parametric Map, SR).

``monailabel start_server --studies http://HOST:8042/dicom-web`` makes MONAI Label use its
``DICOMWebDatastore``; :func:`dicomweb_datastore` builds ours instead, from the same
settings (``MONAI_LABEL_DICOMWEB_*``, ``MONAI_LABEL_QIDO/WADO/STOW_PREFIX``), without the
dcmqi download MONAI Label does on start (we write DICOM with highdicom, and the download
fails where the server has no internet).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from segx.formats.dicom import Series, is_segx_output, series_from_datasets
from segx.formats.export import save_volume
from segx.headers import DEFAULT_MAX_VOXELS

logger = logging.getLogger(__name__)

#: Modalities of the objects SegX writes back; never listed as images to explain.
DERIVED_MODALITIES = ("SEG", "SR", "RTSTRUCT", "PR", "KO")


class SegXDicomWebClient(DICOMwebClientX):
    """MONAI Label's DICOMweb client, whose series searches leave out what SegX stored: an
    automatic SEG is not an annotator's label (MONAI Label counts every SEG referencing an
    image as its final label), and maps and reports are not images."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # dicomweb-client sends bodies over chunk_size (1 MB) with chunked transfer encoding;
        # Orthanc took 17.8 s to take a 315 MB Parametric Map so, 7.9 s in one piece
        self.set_chunk_size(1 << 30)

    def search_for_series(self, *args, **kwargs):
        from pydicom.dataset import Dataset

        fields = list(kwargs.pop("fields", None) or []) + ["Manufacturer", "SeriesDescription"]
        found = super().search_for_series(*args, fields=fields, **kwargs)
        return [ds for ds in found if not is_segx_output(Dataset.from_json(ds))]


class SegXDicomWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore, except:

    - :meth:`get_image_uri` refuses a series over ``max_voxels`` from its metadata, or one
      that is not one volume (``ValueError`` naming the problem: missing slices, mixed
      orientations, ...), and converts it with :func:`segx.formats.dicom.series_from_datasets`
      (the geometry of the series, RAS affine);
    - :meth:`list_images` leaves out derived objects (SEG, SR; its client,
      :class:`SegXDicomWebClient`, never sees SegX's own outputs);
    - :meth:`store` sends an object to the PACS by STOW-RS (in a background thread).
    """

    _series_cache_size = 2

    def __init__(self, *args, max_voxels: int = DEFAULT_MAX_VOXELS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_voxels = max_voxels
        self._series: "OrderedDict[str, Series]" = OrderedDict()
        self._series_lock = threading.Lock()
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segx-stow")

    def list_images(self):
        """Image series (MONAI Label's search filter), without derived objects; not cached
        (MONAI Label caches for 2 h), so a series sent to the PACS is seen at once."""
        from pydicom.dataset import Dataset

        found = [Dataset.from_json(ds) for ds in self._client.search_for_series(search_filters=self._search_filter)]
        return [str(ds.SeriesInstanceUID) for ds in found if ds.get("Modality") not in DERIVED_MODALITIES]

    def series(self, image_id: str) -> Series:
        """The checked series of ``image_id`` (a SeriesInstanceUID), fetched by WADO-RS
        (kept in memory for the last few series; no DICOM files are written)."""
        with self._series_lock:
            if image_id in self._series:
                self._series.move_to_end(image_id)
                return self._series[image_id]
        study = self._checked_size(image_id)
        series = series_from_datasets(self._client.retrieve_series(study, image_id))
        with self._series_lock:
            self._series[image_id] = series
            while len(self._series) > self._series_cache_size:
                self._series.popitem(last=False)
        return series

    def _checked_size(self, image_id: str) -> str:
        """Refuse a series over ``max_voxels`` from its metadata, before its pixel data is
        fetched (``ValueError``); returns its StudyInstanceUID."""
        from pydicom.dataset import Dataset

        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
        if not found:
            raise ValueError(f"series {image_id!r} is not in the PACS")
        study = str(Dataset.from_json(found[0]).StudyInstanceUID)
        instances = [Dataset.from_json(m) for m in self._client.retrieve_series_metadata(study, image_id)]
        voxels = sum(int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1) for ds in instances)
        if voxels > self.max_voxels:
            raise ValueError(f"series {image_id!r} holds {voxels:,} voxels in {len(instances)} instances, over the limit of {self.max_voxels:,}")
        return study

    def get_image_uri(self, image_id: str) -> str:
        """A NIfTI file of the series' volume (written once, in the cache folder;
        uncompressed: gzip took seconds per CT to write and again to read)."""
        path = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii"))
        if not os.path.exists(path):
            series = self.series(image_id)
            save_volume(path + ".part.nii", series.volume, series.affine)
            os.replace(path + ".part.nii", path)
        return path

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = "") -> str:
        """An annotator's ``final`` label is stored in the PACS as a manual DICOM SEG of the
        series (highdicom; MONAI Label's own path needs dcmqi's ``itkimage2segimage``, which
        is not installed), then kept in the cache as MONAI Label does; other tags as MONAI
        Label does. Segment names from ``label_info["label_info"]`` (``[{"name", "idx"}]``,
        as MONAI Label clients send them)."""
        if label_tag != DefaultLabelTag.FINAL or label_filename.endswith(".bin"):
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        from segx.formats.dicom import label_segmentation
        from segx.imageio import read_image

        labels = read_image(label_filename).array[0].round().numpy()
        listed = label_info.get("label_info") if isinstance(label_info.get("label_info"), list) else []
        names = {int(item["idx"]): str(item["name"]) for item in listed if isinstance(item, dict) and "idx" in item and "name" in item}
        seg = label_segmentation(self.series(image_id), labels, names)
        self.store(seg).result()
        label_info = {**label_info, "SeriesInstanceUID": str(seg.SeriesInstanceUID), "StudyInstanceUID": str(seg.StudyInstanceUID)}
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

    def store(self, dataset) -> Future:
        """Send ``dataset`` (pydicom) to the PACS by STOW-RS in the datastore's upload
        thread (in the order given; the caller goes on building the next object: ~25 %
        less wall time for a 512 x 512 x 300 CT's results, ``benchmarks/pacs_roundtrip.py``).
        The future's ``result()`` raises what the upload raised."""
        return self._uploads.submit(self._client.store_instances, [dataset])


def dicomweb_datastore(url: str, max_voxels: int) -> SegXDicomWebDatastore:
    """Our DICOMweb datastore for ``url``, configured as MONAI Label configures its own;
    series with more than ``max_voxels`` voxels are refused before their pixels are fetched."""
    from dicomweb_client.session_utils import create_session_from_user_pass

    username = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    client = SegXDicomWebClient(
        url=url,
        session=create_session_from_user_pass(username, password) if username and password else None,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return SegXDicomWebDatastore(
        client=client,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=cache or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        max_voxels=max_voxels,
    )
