"""The low-res and high-res generators (keypoint-mask paper sec. 2.3).

Both are shared with the perturbed-masks model, whose l and h networks are the same (perturbed-masks paper sec. 3).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import (AntiAliasDownsample, Hourglass, ResBlock2d, SameBlock2d, UpBlock2d, hourglass_width,
                                 init_as_image_copy)


class LowResGenerator(nn.Module):
    """Source (downsampled) + source mask + driving mask -> a full-size frame.

    "Low-res" names its input: it reads frame*scale_factor pixels (64 at 256) and its ``num_up_blocks``
    up blocks bring the prediction back to the frame size.
    """

    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_up_blocks: int,
                 num_bottleneck_blocks: int, scale_factor: float):
        super().__init__()
        bottleneck = hourglass_width(block_expansion, max_features, num_up_blocks)
        self.down = AntiAliasDownsample(num_channels, scale_factor)
        # source + the two one-channel masks; 7x7 straight to the bottleneck width (no down blocks:
        # the original's two were built but never called).
        self.first = SameBlock2d(num_channels + 2, bottleneck, kernel_size=7, padding=3)
        self.bottleneck = nn.Sequential(*[ResBlock2d(bottleneck) for _ in range(num_bottleneck_blocks)])
        widths = [hourglass_width(block_expansion, max_features, i) for i in range(num_up_blocks, -1, -1)]
        self.up_blocks = nn.ModuleList([UpBlock2d(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor, driving_mask: torch.Tensor) -> torch.Tensor:
        """source (B, 3, H, W), masks (B, 1, H*s, W*s) -> prediction (B, 3, H, W) in [0, 1]."""
        out = torch.cat([self.down(source), source_mask, driving_mask], dim=1)   # (B, 5, H*s, W*s)
        out = self.bottleneck(self.first(out))
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))


class HighResGenerator(nn.Module):
    """Source + upsampled masks + the low-res prediction -> a refined full-size frame (hourglass U-Net)."""

    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_blocks: int,
                 copy_source_init: bool = False):
        super().__init__()
        in_features = num_channels + 1 + 1 + num_channels          # source, two masks, low-res prediction
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks=num_blocks, max_features=max_features)
        self.final = nn.Conv2d(self.hourglass.out_filters, num_channels, kernel_size=7, padding=3)
        if copy_source_init:
            self.init_copy_source()

    def init_copy_source(self) -> None:
        """Start as a copy of the source (``init_as_image_copy``): the hourglass hands its input, source first,
        to the last convolution. On the tiny configs' identity task (driving = source) the test L1 starts at
        0.008 instead of 0.17."""
        channels = self.final.out_channels
        init_as_image_copy(self.final, self.hourglass.out_filters - (channels + 1 + 1 + channels))

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor, driving_mask: torch.Tensor,
                low_res_prediction: torch.Tensor) -> torch.Tensor:
        """source (B, 3, H, W), masks (B, 1, h, w), low-res prediction (B, 3, H, W) -> (B, 3, H, W) in [0, 1]."""
        size = source.shape[-2:]
        source_mask = F.interpolate(source_mask, size=size, mode="bilinear", align_corners=False)
        driving_mask = F.interpolate(driving_mask, size=size, mode="bilinear", align_corners=False)
        # Detached: the high-res loss must train only this U-Net, never the low-res generator
        # (paper sec. 2.3; the masks come from the frozen detector and need no gradient either).
        out = torch.cat([source, source_mask.detach(), driving_mask.detach(), low_res_prediction.detach()], dim=1)
        return torch.sigmoid(self.final(self.hourglass(out)))


class GeneratorOutput(NamedTuple):
    low_res_prediction: torch.Tensor      # (B, 3, H, W) in [0, 1]
    prediction: torch.Tensor              # (B, 3, H, W) in [0, 1], the high-res output
    source_mask: torch.Tensor             # (B, 1, H*s, W*s) in [0, 1]
    driving_mask: torch.Tensor            # (B, 1, H*s, W*s) in [0, 1]


class FrameGenerator(nn.Module):
    """The two generators run in sequence: (source, source mask, driving mask) -> the frame. (The perturbed
    family's ``mask_generator`` is another thing: its network m that makes masks, modules/nets/mask_network.py.)"""

    def __init__(self, low_res: LowResGenerator, high_res: HighResGenerator):
        super().__init__()
        self.low_res = low_res
        self.high_res = high_res

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor, driving_mask: torch.Tensor) -> GeneratorOutput:
        low = self.low_res(source, source_mask, driving_mask)
        high = self.high_res(source, source_mask, driving_mask, low)
        return GeneratorOutput(low_res_prediction=low, prediction=high, source_mask=source_mask,
                               driving_mask=driving_mask)


def build_frame_generator(model_params) -> FrameGenerator:
    """l and h of a keypoint-mask or perturbed-masks ``model_params`` (its common_params and generator_params)."""
    common, generator = model_params.common_params, model_params.generator_params
    low_res = LowResGenerator(common.num_channels, generator.block_expansion, generator.max_features,
                              generator.num_up_blocks, generator.num_bottleneck_blocks, common.scale_factor)
    high = generator.high_res
    high_res = HighResGenerator(common.num_channels, high.block_expansion, high.max_features, high.num_blocks,
                                copy_source_init=high.init == "copy_source")
    return FrameGenerator(low_res, high_res)
