"""Evaluation: the per-frame scorer behind every results table, the papers' metrics, the landmark detectors
behind AKD/MKR/AED and the synthetic figures' keypoint regressor."""
