"""SegU scoring and the lowest-certainty-first strategy."""
