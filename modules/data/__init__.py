"""Data: video and image I/O, the training dataset and its augmentation, animation pairs, keypoint labels and
the synthetic renderer."""
