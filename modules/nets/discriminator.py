"""FOMM's multi-scale patch discriminator (LSGAN, with feature matching), with FOMM's arguments and keys.

With ``sn: true`` every convolution carries spectral normalisation in the form an official checkpoint stores
it (``weight_orig``, ``weight_u``, ``weight_v``), i.e. ``torch.nn.utils.spectral_norm``. The discriminator of
scale s lives under ``discs.<s>`` with the dot written as a dash (``discs.1``, ``discs.0-5``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import hourglass_width
from modules.nets.keypoint_detector import draw_gaussians


class DiscriminatorBlock(nn.Module):
    """conv4x4 (no padding) -> InstanceNorm (affine; not in the first block) -> LeakyReLU 0.2 -> avgpool 2."""

    def __init__(self, in_features: int, out_features: int, norm: bool, pool: bool, sn: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class DiscriminatorOutput(NamedTuple):
    feature_maps: list[torch.Tensor]      # each block's output (feature matching compares these)
    prediction_map: torch.Tensor          # (B, 1, h, w) patch scores: 1 = real, 0 = generated (LSGAN)


class Discriminator(nn.Module):
    """Patch discriminator of one scale; with ``use_kp`` the keypoint Gaussians are extra input channels."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4,
                 max_features: int = 512, sn: bool = False, use_kp: bool = False, num_kp: int = 10,
                 kp_variance: float = 0.01, **_: object):
        super().__init__()
        self.use_kp, self.kp_variance = use_kp, kp_variance
        blocks = []
        for i in range(num_blocks):
            in_features = num_channels + num_kp * use_kp if i == 0 else hourglass_width(block_expansion,
                                                                                       max_features, i)
            blocks.append(DiscriminatorBlock(in_features, hourglass_width(block_expansion, max_features, i + 1),
                                             norm=i != 0, pool=i != num_blocks - 1, sn=sn))
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(hourglass_width(block_expansion, max_features, num_blocks), 1, kernel_size=1)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)

    def forward(self, image: torch.Tensor, kp: Optional[torch.Tensor] = None) -> DiscriminatorOutput:
        """image (B, 3, H, W); kp (B, K, 2), needed with use_kp."""
        out = image
        if self.use_kp:
            if kp is None:
                raise ValueError("this discriminator was built with use_kp and needs the driving keypoints")
            out = torch.cat([out, draw_gaussians(kp.float(), image.shape[2:], self.kp_variance).to(out.dtype)], 1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return DiscriminatorOutput(feature_maps, self.conv(out))


def scale_key(scale: float) -> str:
    """FOMM's module key of a pyramid scale: 1 -> '1', 0.5 -> '0-5'."""
    return f"{scale:g}".replace(".", "-")


class MultiScaleDiscriminator(nn.Module):
    """One Discriminator per scale of the image pyramid (FOMM's arguments: scales plus Discriminator's)."""

    def __init__(self, scales: Sequence[float] = (1,), **kwargs: object):
        super().__init__()
        self.scales = list(scales)
        self.discs = nn.ModuleDict({scale_key(scale): Discriminator(**kwargs) for scale in self.scales})

    def forward(self, pyramid: Sequence[torch.Tensor], kp: Optional[torch.Tensor] = None) -> list[DiscriminatorOutput]:
        """pyramid: the image at each of ``scales`` (in that order) -> one output per scale."""
        return [self.discs[scale_key(scale)](image, kp) for scale, image in zip(self.scales, pyramid)]
