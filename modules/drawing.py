"""Keypoints drawn onto image tensors, for the train-vis pictures and the reconstruction videos."""
from __future__ import annotations

import colorsys

import torch


def keypoint_colours(count: int) -> torch.Tensor:
    """(count, 3) RGB in [0, 1] around the hue circle, red to magenta (like matplotlib's gist_rainbow)."""
    return torch.tensor([colorsys.hsv_to_rgb(0.83 * k / max(count - 1, 1), 1.0, 1.0) for k in range(count)])


def draw_keypoints(images: torch.Tensor, keypoints: torch.Tensor, radius: float = 2.0) -> torch.Tensor:
    """A filled, anti-aliased disc of ``radius`` pixels at each keypoint, one colour per keypoint index.

    images (B, 3, H, W) in [0, 1]; keypoints (B, K, 2) in [-1, 1], x first (pixel centres at -1 and +1).
    Returns a new (B, 3, H, W) tensor; the inputs are not changed.
    """
    batch, _, height, width = images.shape
    images = images.detach().float()
    points = keypoints.detach().float().to(images.device)
    x = (points[..., 0] + 1) / 2 * (width - 1)                                    # (B, K) pixels
    y = (points[..., 1] + 1) / 2 * (height - 1)
    columns = torch.arange(width, dtype=torch.float32, device=images.device)
    rows = torch.arange(height, dtype=torch.float32, device=images.device)
    distance = torch.sqrt((columns[None, None, None, :] - x[..., None, None]) ** 2
                          + (rows[None, None, :, None] - y[..., None, None]) ** 2)  # (B, K, H, W)
    coverage = (radius + 0.5 - distance).clamp(0, 1)                            # one pixel of anti-aliasing
    out = images.clone()
    colours = keypoint_colours(points.shape[1]).to(images.device)
    for k in range(points.shape[1]):           # later keypoints drawn over earlier ones, as a painter would
        alpha = coverage[:, k:k + 1]
        out = out * (1 - alpha) + colours[k].view(1, 3, 1, 1) * alpha
    return out
