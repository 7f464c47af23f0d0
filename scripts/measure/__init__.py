"""Measuring tools: a detector's error to labels (detector_error, keypoints_vs_joints), learning curves, the
identities in a set of videos, and a results table (Markdown) from metrics files."""
