"""File formats and the PACS: results written as NRRD/NIfTI (:mod:`.export`), DICOM in and
out (:mod:`.dicom`: series read as volumes; SEG, Parametric Maps and SR written) and a
local Orthanc PACS (:mod:`.pacs`).

Room rule (tests/test_architecture.py): imports the method (``segx``'s root modules) and
this room only.
"""
