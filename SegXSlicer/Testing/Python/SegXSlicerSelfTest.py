"""In-Slicer test entry: the module's self-test (a Run on a synthetic volume against the
server at ``SEGX_SERVER_URL``). Run with
``Slicer --no-main-window --python-script SegXSlicerSelfTest.py`` or through ctest."""

import unittest

from SegXSlicer import SegXSlicerTest


def load_tests(loader, tests, pattern):
    """unittest discovery: the module's self-test case."""
    return unittest.TestSuite([SegXSlicerTest("test_run_on_synthetic_volume")])


if __name__ == "__main__":
    import slicer

    result = unittest.TextTestRunner(verbosity=2).run(load_tests(None, None, None))
    slicer.util.exit(0 if result.wasSuccessful() else 1)
