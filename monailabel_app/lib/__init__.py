"""MONAI Label adapters around the segx core."""
