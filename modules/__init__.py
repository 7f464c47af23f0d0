"""Image animation with keypoint masks: networks, masks, losses and configs."""
