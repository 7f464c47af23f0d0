"""Pictures: network outputs as uint8 frames, frames side by side, contact sheets, training grids, png strips,
and keypoints drawn onto image tensors."""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import imageio.v3 as iio
import numpy as np
import torch

from modules.core.outputs import atomic_file


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


def to_uint8(images: "torch.Tensor", size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """(B, C, h, w) in [0, 1] (C = 1 or 3) -> (B, H, W, 3) uint8, rounded as every saved frame is; with
    ``size``, scaled up with nearest neighbours (masks), so that each pixel shows exactly what the network saw."""
    images = images.detach().float()
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        import torch.nn.functional as F  # here, so that reading and writing videos needs no torch

        images = F.interpolate(images, size=size, mode="nearest")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)



def side_by_side(columns: Sequence[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """Per sample, the columns' images next to each other: (B, H, len(columns)*W, 3) uint8."""
    return np.concatenate([to_uint8(column, size) for column in columns], axis=2)


def contact_sheet(visual: np.ndarray, columns: int, count: int = 8) -> np.ndarray:
    """Side-by-side frames (T, H, columns*W, 3) -> one image whose rows are the columns (source, driving,
    mask, ...) and whose columns are ``count`` frames evenly spread over the video: (columns*H, count*W, 3)."""
    frames, _, total_width, _ = visual.shape
    width = total_width // columns
    picked = sheet_frames(frames, count)
    rows = [np.concatenate([visual[t, :, c * width:(c + 1) * width] for t in picked], axis=1) for c in range(columns)]
    return np.concatenate(rows, axis=0)


def sheet_frames(frames: int, count: int = 8) -> list[int]:
    """The frames a contact sheet of a ``frames``-long video shows: ``count`` evenly spread."""
    return np.linspace(0, frames - 1, min(count, frames)).round().astype(int).tolist()


def training_grid(columns: Sequence[torch.Tensor], max_rows: int = 4) -> np.ndarray:
    """Images side by side per sample, one row per batch element: (rows*H, len(columns)*W, 3) uint8.

    columns: (B, C, h, w) tensors in [0, 1]; smaller ones (the masks) are scaled up with nearest
    neighbours so that each cell shows exactly what the network saw.
    """
    size = (max(c.shape[2] for c in columns), max(c.shape[3] for c in columns))
    rows = side_by_side([column[:max_rows] for column in columns], size)       # (rows, H, k*W, 3)
    return np.concatenate(list(rows), axis=0)


def write_strip(path: str, frames: np.ndarray) -> None:
    """uint8 frames (T, H, W, 3) side by side in one png (H, T*W, 3): the layout FOMM's evaluation tools read.
    Written under a temporary name and renamed when complete."""
    with atomic_file(path) as temporary:
        iio.imwrite(temporary, np.concatenate(list(frames), axis=1), extension=".png")
