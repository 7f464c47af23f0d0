"""FOMM's dense motion network (Siarohin et al. 2019, sec. 3.2): sparse keypoint motions -> one dense flow.

Each keypoint k moves the neighbourhood of its driving position z_k by its local affine transform,

    T_k(z) = kp_source_k + J_k (z - kp_driving_k),     J_k = J_source_k @ inverse(J_driving_k),

and the background (k = 0) does not move. The network sees, for each of the K+1 motions, the source warped
by it and the difference of the driving and source keypoint Gaussians, and predicts a softmax mask that
blends the K+1 motions into one backward flow (driving frame -> source frame), plus an occlusion map.

Module names (``hourglass``, ``mask``, ``occlusion``, ``down``) are FOMM's state-dict keys.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import AntiAliasDownsample, Hourglass, make_coordinate_grid
from modules.nets.keypoint_detector import draw_gaussians
from modules.nets.keypoints import Keypoints


def warp(image: torch.Tensor, flow: torch.Tensor, align_corners: bool,
         padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at ``flow`` (B, h, w, 2), (x, y) in [-1, 1]; a flow of another size is
    first resized bilinearly to (H, W), as FOMM does. Returns (B, C, H, W) (or (B, C, h, w) if sizes match)."""
    if flow.shape[1:3] != image.shape[2:]:
        flow = F.interpolate(flow.permute(0, 3, 1, 2), size=image.shape[2:], mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(image, flow.to(image.dtype), mode="bilinear", padding_mode=padding_mode,
                         align_corners=align_corners)


class DenseMotion(NamedTuple):
    sparse_deformed: torch.Tensor         # (B, K+1, C, h, w) the source warped by each motion (0: background)
    mask: torch.Tensor                    # (B, K+1, h, w) softmax weights of the motions
    deformation: torch.Tensor             # (B, h, w, 2) backward flow, driving -> source, in [-1, 1]
    occlusion_map: Optional[torch.Tensor]  # (B, 1, h, w) in [0, 1], or None


class DenseMotionNetwork(nn.Module):
    """Keypoints and Jacobians of the source and driving frames -> dense flow and occlusion (FOMM's arguments).

    h, w = the frame's size times ``scale_factor`` (64 for 256-px frames at 0.25).
    """

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int, num_channels: int,
                 estimate_occlusion_map: bool = False, scale_factor: float = 1, kp_variance: float = 0.01,
                 align_corners: bool = True):
        super().__init__()
        self.num_kp = num_kp
        self.kp_variance = kp_variance
        self.scale_factor = scale_factor
        self.align_corners = align_corners
        # per motion: one heatmap-difference channel and the warped source's channels
        self.hourglass = Hourglass(block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
                          if estimate_occlusion_map else None)
        if scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, scale_factor)

    def heatmap_differences(self, size: tuple[int, int], kp_driving: Keypoints, kp_source: Keypoints) -> torch.Tensor:
        """Gaussians at the driving keypoints minus those at the source keypoints, a zero map for the
        background first: (B, K+1, 1, h, w)."""
        difference = draw_gaussians(kp_driving.value.float(), size, self.kp_variance) \
            - draw_gaussians(kp_source.value.float(), size, self.kp_variance)               # (B, K, h, w)
        background = difference.new_zeros(difference.shape[0], 1, *size)
        return torch.cat([background, difference], dim=1).unsqueeze(2)

    def sparse_motions(self, size: tuple[int, int], kp_driving: Keypoints, kp_source: Keypoints) -> torch.Tensor:
        """Each keypoint's affine motion T_k evaluated on the driving grid, the identity first: (B, K+1, h, w, 2)."""
        # fp32 even under autocast: a bf16 grid is off by up to half a pixel at 256 px, and inv() needs fp32.
        value_driving, value_source = kp_driving.value.float(), kp_source.value.float()
        identity = make_coordinate_grid(*size, dtype=value_driving.dtype, device=value_driving.device)  # (h, w, 2)
        offsets = identity[None, None] - value_driving[:, :, None, None, :]                            # (B, K, h, w, 2)
        if kp_driving.jacobian is not None and kp_source.jacobian is not None:
            jacobian = kp_source.jacobian.float() @ torch.linalg.inv(kp_driving.jacobian.float())      # (B, K, 2, 2)
            offsets = (jacobian[:, :, None, None] @ offsets.unsqueeze(-1)).squeeze(-1)
        motions = offsets + value_source[:, :, None, None, :]
        background = identity[None, None].expand(motions.shape[0], 1, *identity.shape)
        return torch.cat([background, motions], dim=1)

    def forward(self, source: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> DenseMotion:
        """source (B, C, H, W) in [0, 1] -> DenseMotion at (H, W) * scale_factor."""
        if self.scale_factor != 1:
            source = self.down(source)
        batch, channels, height, width = source.shape
        size = (height, width)
        heatmaps = self.heatmap_differences(size, kp_driving, kp_source).to(source.dtype)    # (B, K+1, 1, h, w)
        motions = self.sparse_motions(size, kp_driving, kp_source)                      # (B, K+1, h, w, 2)
        count = motions.shape[1]
        repeated = source.unsqueeze(1).expand(-1, count, -1, -1, -1).reshape(batch * count, channels, *size)
        deformed = warp(repeated, motions.reshape(batch * count, *size, 2), self.align_corners)
        deformed = deformed.view(batch, count, channels, *size)
        # Per motion (heatmap, R, G, B): the channel order of FOMM's first hourglass convolution.
        features = self.hourglass(torch.cat([heatmaps, deformed], dim=2).view(batch, -1, *size))
        mask = F.softmax(self.mask(features), dim=1)                                     # (B, K+1, h, w)
        deformation = (mask.float().unsqueeze(-1) * motions).sum(dim=1)                  # (B, h, w, 2)
        occlusion = torch.sigmoid(self.occlusion(features)) if self.occlusion is not None else None
        return DenseMotion(sparse_deformed=deformed, mask=mask, deformation=deformation, occlusion_map=occlusion)
