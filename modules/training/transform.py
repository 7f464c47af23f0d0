"""FOMM's random thin-plate-spline transform for the equivariance losses (Siarohin et al. 2019, sec. 3.4).

A random affine map plus a TPS displacement on a ``points_tps`` x ``points_tps`` grid of control points:

    warp(z) = A z + t + [s(z), s(z)],    s(z) = sum_k w_k r_k^2 log(r_k + 1e-6),    r_k = |z - q_k|_1

with A = I + N(0, sigma_affine), t = N(0, sigma_affine), w_k = N(0, sigma_tps). The displacement s is added to
both coordinates and r_k is the L1 distance, exactly as in FOMM's code, so losses are comparable with its
runs. The Jacobian is computed in closed form (FOMM differentiates with autograd; same values, tested).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from modules.nets.blocks import make_coordinate_grid

EPS = 1e-6


class RandomTPS:
    """One random transform per sample. ``transform_frame`` warps images, ``warp_coordinates`` maps points
    of the transformed frame back to the original one, and ``jacobian`` is that map's derivative."""

    def __init__(self, batch_size: int, sigma_affine: float, sigma_tps: float, points_tps: int, *,
                 device: torch.device | str | None = None, generator: Optional[torch.Generator] = None):
        def normal(*shape: int, std: float) -> torch.Tensor:
            return torch.randn(*shape, generator=generator) * std

        self.theta = (normal(batch_size, 2, 3, std=sigma_affine) + torch.eye(2, 3)).to(device)      # (B, 2, 3)
        self.control_points = make_coordinate_grid(points_tps, points_tps).view(-1, 2).to(device)   # (P, 2)
        self.control_params = normal(batch_size, points_tps ** 2, std=sigma_tps).to(device)         # (B, P)

    @classmethod
    def identity(cls, batch_size: int, points_tps: int = 5) -> "RandomTPS":
        return cls(batch_size, 0.0, 0.0, points_tps)

    def _distances(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) -> signed offsets to every control point (B, N, P, 2)."""
        return coordinates[:, :, None, :] - self.control_points.to(coordinates.dtype)[None, None]

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) points in [-1, 1] -> (B, N, 2) transformed points."""
        theta = self.theta.to(coordinates.dtype)
        affine = coordinates @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        r = self._distances(coordinates).abs().sum(-1)                                      # (B, N, P)
        tps = (r ** 2 * torch.log(r + EPS) * self.control_params.to(coordinates.dtype)[:, None]).sum(-1)
        return affine + tps.unsqueeze(-1)

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """d warp / d z at (B, N, 2) points -> (B, N, 2, 2), rows = output coordinate, columns = input."""
        theta = self.theta.to(coordinates.dtype)
        offsets = self._distances(coordinates)                                              # (B, N, P, 2)
        r = offsets.abs().sum(-1, keepdim=True)
        d_phi = 2 * r * torch.log(r + EPS) + r ** 2 / (r + EPS)                             # d/dr r^2 log(r+eps)
        weights = self.control_params.to(coordinates.dtype)[:, None, :, None]
        gradient = (weights * d_phi * torch.sign(offsets)).sum(2)                           # (B, N, 2): ds/dz
        return theta[:, None, :, :2] + gradient.unsqueeze(2).expand(-1, -1, 2, -1)

    def transform_frame(self, frame: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> the frame seen through the transform (reflection at the borders), same shape."""
        batch, _, height, width = frame.shape
        grid = make_coordinate_grid(height, width, device=frame.device).view(1, -1, 2).expand(batch, -1, -1)
        grid = self.warp_coordinates(grid).view(batch, height, width, 2)
        return F.grid_sample(frame, grid.to(frame.dtype), padding_mode="reflection", align_corners=align_corners)
