"""SegXSlicerLib: the SegX Slicer module's logic, testable outside Slicer.

- :mod:`.client`: HTTP client of the SegX MONAI Label server.
- :mod:`.results`: models of ``/info`` and the readouts of a SegX reply.
- :mod:`.volumeio`: NRRD/PNG encoding of volumes (numpy only).
- :mod:`.display`: heatmap display maths (colour tables, window, threshold).
- :mod:`.worker`, :mod:`.jobs`: background jobs that never touch Qt or MRML.
- :mod:`.mrml`, :mod:`.logic`: MRML nodes of the results (main thread).
- :mod:`.widget`: the Qt panel (inside Slicer only).
"""
