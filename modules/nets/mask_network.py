"""The perturbed-masks paper's mask networks (Shalev & Wolf, sec. 3.1): the mask generator m, which makes a
one-channel structural mask from a frame, and the refinement network r, which restores a perturbed one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import AntiAliasDownsample, Hourglass


class MaskNetwork(nn.Module):
    """Hourglass without skips -> 7x7 conv (no padding) to one channel -> sigmoid(x / temperature), zero-padded
    back to the input size. m reads the image downsampled by ``scale_factor``; r reads (D(s), m_s, m_dp).

    (B, in_channels, H, W) -> (B, 1, H * scale_factor, W * scale_factor) in [0, 1].
    """

    def __init__(self, in_channels: int, block_expansion: int, max_features: int, num_blocks: int,
                 temperature: float = 0.1, scale_factor: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.down = AntiAliasDownsample(in_channels, scale_factor) if scale_factor != 1 else nn.Identity()
        self.hourglass = Hourglass(block_expansion, in_channels, num_blocks, max_features, skips=False)
        self.head = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=0)
        self.border = (self.head.kernel_size[0] - 1) // 2    # the zero padding around the head's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.hourglass(self.down(x)))
        pad = self.border                                   # 58x58 -> 64x64 at 256 px: zeros at the border
        return F.pad(torch.sigmoid(logits.float() / self.temperature), (pad, pad, pad, pad))
