"""Shared building blocks: anti-aliased downsampling, coordinate grids, conv blocks and the hourglass U-Net.

The module and attribute names (``conv``, ``norm``, ``down_blocks``, ``up_blocks``, ``encoder``,
``decoder``) are part of the FOMM checkpoint contract (its published checkpoints' keys): state-dict keys are built from
them, so renaming one breaks loading of official checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) grid of (x, y) pixel-centre coordinates; first and last centres sit at -1 and +1."""
    # 2 * i / (n - 1) - 1 rather than linspace: the same float rounding as the original grids.
    xs = 2 * torch.arange(width, dtype=dtype, device=device) / max(width - 1, 1) - 1
    ys = 2 * torch.arange(height, dtype=dtype, device=device) / max(height - 1, 1) - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def anti_alias_kernel_size(scale: float) -> tuple[int, float]:
    """Gaussian kernel size and sigma used before subsampling by ``scale`` (0.25 -> 13, 1.5)."""
    sigma = (1.0 / scale - 1.0) / 2.0
    return 2 * round(sigma * 4) + 1, sigma


class AntiAliasDownsample(nn.Module):
    """Gaussian low-pass then keep every (1/scale)-th pixel (FOMM's anti-aliasing: sigma 1.5, 13x13 at 0.25).

    The kernel is a buffer named ``weight`` because FOMM checkpoints store it as ``down.weight``.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        inverse = 1.0 / scale
        if abs(inverse - round(inverse)) > 1e-6 or round(inverse) < 1:
            raise ValueError(f"scale must be 1/n for an integer n, got {scale}")
        self.stride = int(round(inverse))
        if self.stride == 1:
            kernel = torch.ones(1, 1)          # scale 1 is the identity (sigma 0 would give 0/0)
        else:
            size, sigma = anti_alias_kernel_size(scale)
            positions = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
            gauss_1d = torch.exp(-positions ** 2 / (2 * sigma ** 2))
            kernel = gauss_1d[:, None] * gauss_1d[None, :]
            kernel = kernel / kernel.sum()
        self.pad = kernel.shape[-1] // 2       # the size is always odd (2 * round(4 sigma) + 1)
        self.channels = channels
        self.register_buffer("weight", kernel.expand(channels, 1, *kernel.shape).clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H*scale, W*scale)."""
        if self.stride == 1:
            return image
        padded = F.pad(image, (self.pad,) * 4)
        # A strided convolution computes only the kept pixels: the same values as blurring everything and
        # slicing [::stride] (FOMM's way), stride**2 times fewer multiplications, and it avoids a oneDNN path
        # that stalls for minutes on large bf16 channels_last depthwise kernels (29x29 at scale 0.125).
        return F.conv2d(padded, self.weight.to(image.dtype), stride=self.stride, groups=self.channels)


class DownBlock2d(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU -> avgpool 2x2 (encoder block of FOMM's hourglass)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class UpBlock2d(nn.Module):
    """nearest x2 -> conv3x3 -> BatchNorm -> ReLU (decoder block of the hourglass and the low-res generator)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class SameBlock2d(nn.Module):
    """conv (same size) -> BatchNorm -> ReLU."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: BN, ReLU, conv3x3, BN, ReLU, conv3x3, plus the input."""

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.conv1 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.norm2 = nn.BatchNorm2d(features, affine=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


@torch.no_grad()
def init_as_image_copy(conv: nn.Conv2d, first_image_channel: int, gain: float = 4.4) -> None:
    """Make ``conv`` (followed by a sigmoid) start as a copy of the image that its input channels
    ``first_image_channel ...`` hold: sigmoid(gain * (image - 0.5)) per channel, every other weight 0.

    Why: copying a pixel through the sigmoid takes a centre weight of about 4, and Adam moves a weight by about
    the learning rate per step: some 20,000 steps at 2e-4 from PyTorch's initialisation (|w| < 0.04), the whole
    CPU budget of a tiny run. With gain 4.4 the copy is within 0.011 of the image on [0.2, 0.8] (0.10 at black
    and white); training corrects the rest.
    """
    centre = conv.kernel_size[0] // 2
    conv.weight.zero_()
    conv.bias.fill_(-gain / 2)
    for channel in range(conv.out_channels):
        conv.weight[channel, first_image_channel + channel, centre, centre] = gain


def hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channels after ``level`` down blocks of the hourglass (level 0 = block_expansion)."""
    return min(max_features, block_expansion * 2 ** level)


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` DownBlock2d; returns the input and every block's output."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            block_in = in_features if i == 0 else hourglass_width(block_expansion, max_features, i)
            blocks.append(DownBlock2d(block_in, hourglass_width(block_expansion, max_features, i + 1)))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for block in self.down_blocks:
            features.append(block(features[-1]))
        return features


class Decoder(nn.Module):
    """Hourglass decoder: UpBlock2d per level, each output concatenated with the encoder's skip.

    ``skips=False`` is the perturbed-masks paper's variant (its sec. 3): every up block reads only the
    block below it, and the output has ``block_expansion`` channels.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
                 skips: bool = True):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            # The deepest block reads the bottleneck alone; the others read (up output, skip) concatenated.
            factor = 1 if i == num_blocks - 1 or not skips else 2
            blocks.append(UpBlock2d(factor * hourglass_width(block_expansion, max_features, i + 1),
                                    hourglass_width(block_expansion, max_features, i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.skips = skips
        self.out_filters = block_expansion + in_features if skips else block_expansion

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = features[-1]
        for block, skip in zip(self.up_blocks, reversed(features[:-1])):
            out = torch.cat([block(out), skip], dim=1) if self.skips else block(out)
        return out


class Hourglass(nn.Module):
    """U-Net with skip concatenation; output has ``block_expansion + in_features`` channels, input size.
    With ``skips=False`` an encoder-decoder without them, ``block_expansion`` channels out."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256,
                 skips: bool = True):
        super().__init__()
        self.num_blocks = num_blocks
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, skips)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        divisor = 2 ** self.num_blocks
        if x.shape[-1] % divisor or x.shape[-2] % divisor:
            raise ValueError(f"hourglass with {self.num_blocks} blocks needs sides divisible by {divisor}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.decoder(self.encoder(x))

