"""FOMM's occlusion-aware generator (Siarohin et al. 2019, sec. 3.3).

The source is encoded (7x7 same block, ``num_down_blocks`` down blocks), its features are warped by the dense
motion network's flow and multiplied by the occlusion map, then decoded (residual bottleneck, up blocks, 7x7
conv, sigmoid). Constructor arguments and module names are FOMM's, so the ``generator`` entry of an official
checkpoint loads strictly (``fixtures/fomm-vox-256-state-dict-keys.tsv``).

``align_corners``: FOMM's weights were trained with PyTorch 1.0, whose ``grid_sample`` sampled as
``align_corners=True`` does today. True also matches the coordinate grid (first and last pixel centres at -1
and +1), so the identity flow reproduces the image exactly. Keep True to run the official checkpoints.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, hourglass_width, init_as_image_copy
from modules.nets.dense_motion import DenseMotionNetwork, warp
from modules.nets.keypoints import Keypoints


class FommOutput(NamedTuple):
    prediction: torch.Tensor              # (B, 3, H, W) in [0, 1]
    deformed: torch.Tensor                # (B, 3, H, W) the source warped by the dense flow
    mask: torch.Tensor                    # (B, K+1, h, w) motion weights (h, w = H, W * dense motion scale)
    sparse_deformed: torch.Tensor         # (B, K+1, 3, h, w)
    occlusion_map: Optional[torch.Tensor]  # (B, 1, h, w) or None


class OcclusionAwareGenerator(nn.Module):
    """Source image + source and driving keypoints -> the source moved like the driving frame."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[Mapping[str, Any]] = None, estimate_jacobian: bool = False,
                 align_corners: bool = True, deformed_skip: bool = False):
        super().__init__()
        if dense_motion_params is None:
            raise ValueError("OcclusionAwareGenerator needs dense_motion_params (FOMM without motion is an "
                             "autoencoder of the source)")
        self.align_corners = align_corners
        self.estimate_jacobian = estimate_jacobian
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                       estimate_occlusion_map=estimate_occlusion_map,
                                                       align_corners=align_corners, **dense_motion_params)
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        widths = [hourglass_width(block_expansion, max_features, i) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList([DownBlock2d(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.up_blocks = nn.ModuleList([UpBlock2d(a, b) for a, b in zip(widths[:0:-1], widths[-2::-1])])
        # FOMM names the residual blocks r0, r1, ... inside a Sequential: keys bottleneck.r0.conv1.weight, ...
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(widths[-1]))
        # deformed_skip (not in FOMM): the last convolution also reads the source warped by the dense flow, and
        # starts as a copy of it. FOMM's decoder must first learn to autoencode the source through the
        # bottleneck before the reconstruction loss cares where the limbs went; with the skip the loss sees the
        # warped pixels from step 0, so its gradient reaches the flow, and through it the keypoints, at once.
        # Same keys as FOMM; the final weight has 3 more input channels (official checkpoints need it off).
        self.deformed_skip = deformed_skip
        self.final = nn.Conv2d(block_expansion + (num_channels if deformed_skip else 0), num_channels,
                               kernel_size=7, padding=3)
        if deformed_skip:                   # the warped source is the last input channels
            init_as_image_copy(self.final, block_expansion)

    def forward(self, source: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> FommOutput:
        """source (B, 3, H, W) in [0, 1]; keypoints (B, K, 2), Jacobians (B, K, 2, 2) -> FommOutput."""
        if not self.estimate_jacobian:
            kp_driving = kp_driving.without_jacobian()
            kp_source = kp_source.without_jacobian()
        out = self.first(source)
        for block in self.down_blocks:
            out = block(out)
        motion = self.dense_motion_network(source, kp_driving, kp_source)
        out = warp(out, motion.deformation, self.align_corners)
        if motion.occlusion_map is not None:
            occlusion = motion.occlusion_map
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out * occlusion
        deformed = warp(source, motion.deformation, self.align_corners)
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        if self.deformed_skip:
            out = torch.cat([out, deformed], dim=1)
        prediction = torch.sigmoid(self.final(out))
        return FommOutput(prediction=prediction, deformed=deformed, mask=motion.mask,
                          sparse_deformed=motion.sparse_deformed, occlusion_map=motion.occlusion_map)


