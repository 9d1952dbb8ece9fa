"""Classification, segmentation and SegX/SegU infer tasks."""
