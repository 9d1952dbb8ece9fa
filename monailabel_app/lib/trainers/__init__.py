"""Trainers for the classifier and the segmenter."""
