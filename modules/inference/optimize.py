"""Exact rewrites of an eval-mode model for inference: the ``torch-opt`` engine, and what the exported engines
export.

Two rewrites, both the same function of the input up to float rounding (the tests pin 1e-4):

1. **BatchNorm folding.** In eval mode a BatchNorm right after a convolution is a per-channel affine map,
   so it folds into that convolution's weight and bias (every conv -> BN -> ReLU block of FOMM's hourglass
   and of the generators; in the pre-activation residual block, the BN between its two convolutions).
2. **Sub-pixel up blocks.** An up block upsamples by 2 (nearest) and then applies a 3x3 convolution. Each of
   the four output phases (even/odd row, even/odd column) then sees only a 2x2 window of the low-resolution
   input, whose weights are sums of the 3x3 taps that land on the same input pixel. So one 2x2 convolution
   with 4x the output channels on the low-resolution input, followed by a pixel shuffle, computes the same
   thing with 4/9 of the multiplications and without the 4x larger upsampled tensor. In the taichi-256
   networks those convolutions are half the work (97 of 200 GFLOP per frame).

Training never sees these modules: ``optimize_for_inference`` works on a copy of a model in eval mode.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from modules.nets.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``norm(conv(x))`` with ``norm`` in eval mode (its running statistics)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)                  # (C_out,)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    folded.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return folded.to(conv.weight.device)


class ConvReLU(nn.Module):
    """conv -> ReLU (-> 2x2 average pool): SameBlock2d and DownBlock2d with their BatchNorm folded."""

    def __init__(self, conv: nn.Conv2d, pool: bool):
        super().__init__()
        self.conv, self.pool = conv, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv(x))
        return F.avg_pool2d(out, kernel_size=2) if self.pool else out


class FoldedResBlock(nn.Module):
    """ResBlock2d with its second BatchNorm folded into its first convolution. The first BatchNorm reads
    the block's input (a sum, not a convolution) and stays."""

    def __init__(self, block: ResBlock2d):
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = fold_batchnorm(block.conv1, block.norm2)
        self.conv2 = block.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(self.norm1(x))))) + x


@torch.no_grad()
def sub_pixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) taps of a 3x3 convolution after a nearest x2 upsampling -> (4 * C_out, C_in, 2, 2):
    phase (a, b) (output row parity a, column parity b) in channels [(2a + b) * C_out, ...), its 2x2 window
    starting at padded low-res pixel (i + a, j + b) for output (2i + a, 2j + b).

    Along one axis, output 2i (a = 0) reads input rows i - 1 (tap 0) and i (taps 1 + 2); output 2i + 1 reads
    row i (taps 0 + 1) and row i + 1 (tap 2).
    """
    rows = weight.new_tensor([[[1, 0, 0], [0, 1, 1]],          # a = 0: window row 0 <- tap 0, row 1 <- taps 1, 2
                              [[1, 1, 0], [0, 0, 1]]])         # a = 1: window row 0 <- taps 0, 1, row 1 <- tap 2
    phases = [torch.einsum("pk,ql,oikl->oipq", rows[a], rows[b], weight) for a in (0, 1) for b in (0, 1)]
    return torch.cat(phases, dim=0)


class SubPixelUpBlock(nn.Module):
    """UpBlock2d (nearest x2 -> conv3x3 -> BatchNorm -> ReLU) as one 2x2 convolution on the low-resolution
    input and a pixel shuffle (module docstring, rewrite 2)."""

    def __init__(self, block: UpBlock2d):
        super().__init__()
        conv = fold_batchnorm(block.conv, block.norm)
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise ValueError("sub-pixel rewrite needs a 3x3 convolution with padding 1")
        self.out_channels = conv.out_channels
        self.conv = nn.Conv2d(conv.in_channels, 4 * conv.out_channels, 2).to(conv.weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(sub_pixel_weight(conv.weight))
            self.conv.bias.copy_(conv.bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, h, w) -> (B, C_out, 2h, 2w)."""
        height, width = x.shape[-2:]
        out = F.relu(self.conv(F.pad(x, (1, 1, 1, 1))))             # (B, 4 C_out, h + 1, w + 1)
        batch, channels = out.shape[0], self.out_channels
        phases = [out[:, (2 * a + b) * channels:(2 * a + b + 1) * channels, a:a + height, b:b + width]
                  for a in (0, 1) for b in (0, 1)]
        # (B, C, 2, 2, h, w) -> (B, C, h, 2, w, 2): row 2i + a, column 2j + b
        stacked = torch.stack(phases, dim=2).reshape(batch, channels, 2, 2, height, width)
        return stacked.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, 2 * height, 2 * width)


def _rewritten(module: nn.Module) -> nn.Module | None:
    if isinstance(module, UpBlock2d):
        return SubPixelUpBlock(module)
    if isinstance(module, (SameBlock2d, DownBlock2d)):
        return ConvReLU(fold_batchnorm(module.conv, module.norm), pool=isinstance(module, DownBlock2d))
    if isinstance(module, ResBlock2d):
        return FoldedResBlock(module)
    return None


def rewrite_blocks(module: nn.Module) -> int:
    """Replace, in place, every block of ``module`` that has an exact faster form; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        replacement = _rewritten(child)
        if replacement is not None:
            setattr(module, name, replacement)
            count += 1
        else:
            count += rewrite_blocks(child)
    return count


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every block rewritten (module docstring); ``model`` is untouched."""
    if model.training:
        raise ValueError("optimize_for_inference needs a model in eval mode (BatchNorm folds its running statistics)")
    optimized = copy.deepcopy(model)
    rewrite_blocks(optimized)
    return optimized.eval()
