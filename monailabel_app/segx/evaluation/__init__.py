"""Evaluation and research tooling: datasets (:mod:`.datasets`), metrics (:mod:`.metrics`),
controls and faithfulness (:mod:`.faithfulness`, :mod:`.baselines`), whole-dataset runs
(:mod:`.evaluate`, :mod:`.rows`, :mod:`.distributed` on Ray), calibration of the certainty
levels (:mod:`.calibrate`) and worklists (:mod:`.batch`).

Room rule (tests/test_architecture.py): imports the method (``segx``'s root modules),
:mod:`segx.formats` and this room.
"""
