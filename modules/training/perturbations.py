"""The perturbed-masks paper's mask perturbations and driver colour augmentation, as tensor operations on the
model's device (perturbed-masks paper sec. 3.1; the public code did them in numpy with imgaug, one sample at a time).

* ``perturb_train`` (P_train): split the mask into strips along one axis and rescale each strip along that
  axis, rescale the whole along the other axis; then the same with the axes swapped; then ``threshold``.
  One bilinear resampling does it all: every step is a separable coordinate map, so their composition is one
  map per axis. The canvas keeps its size (the strips are laid out about its centre); what leaves it is
  cropped and what is uncovered is 0, as in the public code.
* ``threshold`` (P_test): zero every pixel at or below rho, where rho is each mask's median (the paper) or a
  fixed value (the public code: 60/255 Tai-Chi, 100/255 VoxCeleb).
* ``colour_augment`` (A): brightness, contrast and saturation times U[1 - a, 1 + a], hue plus U[-h, h].

Randomness comes from ``torch``'s generator on the mask's device (or the one passed), which the trainer seeds
and checkpoints, so a run repeats exactly and resumes exactly.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Threshold = Union[str, float]           # "median" or a fixed value in [0, 1]


# ------------------------------------------------------------------------------------------- coordinate maps
# A map takes output coordinates u (B, N) in pixels (pixel i spans [i, i + 1)) to input coordinates, NaN where
# the output pixel shows nothing of the input.

def strip_map(u: torch.Tensor, size: int, scales: torch.Tensor) -> torch.Tensor:
    """Strips of equal input width size/S, strip k scaled by scales[:, k] (B, S) and laid side by side about
    the centre of the axis: output coordinates u (B, N) -> input coordinates (B, N), NaN outside the strips."""
    batch, strips = scales.shape
    width = size / strips
    out_widths = scales * width                                              # (B, S)
    starts = torch.cat([scales.new_zeros(batch, 1), out_widths.cumsum(1)], dim=1)   # (B, S + 1)
    offset = (size - starts[:, -1:]) / 2                                     # centre the layout
    t = u - offset                                                           # position along the strips
    k = torch.searchsorted(starts[:, 1:-1].contiguous(), t.contiguous(), right=True).clamp(0, strips - 1)
    inside = (t >= 0) & (t <= starts[:, -1:])
    source = k * width + (t - starts.gather(1, k)) / scales.gather(1, k)
    return torch.where(inside, source, torch.full_like(source, float("nan")))


def zoom_map(u: torch.Tensor, size: int, scale: torch.Tensor) -> torch.Tensor:
    """The whole axis scaled by scale (B,) about its centre: output coordinates -> input, NaN outside it."""
    source = (u - size / 2) / scale[:, None] + size / 2
    return torch.where((source >= 0) & (source <= size), source, torch.full_like(source, float("nan")))


def resample(mask: torch.Tensor, x_source: torch.Tensor, y_source: torch.Tensor) -> torch.Tensor:
    """mask (B, C, H, W) read at input columns x_source (B, W) and rows y_source (B, H) (pixels, NaN = 0)."""
    height, width = mask.shape[-2:]
    # pixel coordinate -> grid_sample's [-1, 1] (align_corners=False: pixel i's centre is i + 0.5)
    gx = torch.nan_to_num(x_source * (2 / width) - 1, nan=-3.0)
    gy = torch.nan_to_num(y_source * (2 / height) - 1, nan=-3.0)
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    return F.grid_sample(mask, grid.to(mask.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _centres(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(size, device=device, dtype=torch.float32) + 0.5).expand(batch, size)


def deform(mask: torch.Tensor, strips_x: torch.Tensor, zoom_y: torch.Tensor, strips_y: torch.Tensor,
           zoom_x: torch.Tensor) -> torch.Tensor:
    """P_train's geometry with given factors: first the strips along x (strips_x (B, S)) and the zoom along y
    (zoom_y (B,)), then the strips along y and the zoom along x. mask (B, C, H, W) -> same shape."""
    batch, _, height, width = mask.shape
    x = _centres(batch, width, mask.device)
    y = _centres(batch, height, mask.device)
    # final(x, y) = first(zoom_x^-1(x), strips_y^-1(y)) = mask(strips_x^-1(zoom_x^-1(x)), zoom_y^-1(...)).
    x_source = strip_map(zoom_map(x, width, zoom_x), width, strips_x)
    y_source = zoom_map(strip_map(y, height, strips_y), height, zoom_y)
    return resample(mask, x_source, y_source)


# -------------------------------------------------------------------------------------------- P_train, P_test

def threshold(mask: torch.Tensor, rule: Threshold = "median", border: int = 0) -> torch.Tensor:
    """P_test: zero every pixel at or below rho; the rest keep their values. mask (B, 1, H, W).

    ``border``: pixels on each side left out of the median. The mask networks zero-pad their 7x7 heads'
    output by 3 px, which is 18% of a 64x64 mask but 61% of the tiny configs' 16x16 one: counted, those zeros
    would make the median 0 and the threshold a no-op.
    """
    if rule == "median":
        height, width = mask.shape[-2:]
        inside = mask[..., border:height - border, border:width - border]
        # Per mask; the lower median of an even count, so at least half the pixels inside are zeroed.
        rho = inside.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    else:
        rho = torch.as_tensor(float(rule), dtype=mask.dtype, device=mask.device)
    return torch.where(mask > rho, mask, torch.zeros_like(mask))


def _uniform(shape: tuple[int, ...], low: float, high: float, device: torch.device,
             generator: Optional[torch.Generator]) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


def perturb_train(mask: torch.Tensor, rule: Threshold = "median", num_strips: int = 6,
                  scale_range: tuple[float, float] = (0.75, 1.25),
                  generator: Optional[torch.Generator] = None, border: int = 0) -> torch.Tensor:
    """P_train: random strip and zoom rescaling in both orientations, then the threshold. (B, 1, H, W) in,
    same shape and range out; each sample draws its own factors."""
    batch, device = mask.shape[0], mask.device
    low, high = scale_range
    strips_x = _uniform((batch, num_strips), low, high, device, generator)
    zoom_y = _uniform((batch,), low, high, device, generator)
    strips_y = _uniform((batch, num_strips), low, high, device, generator)
    zoom_x = _uniform((batch,), low, high, device, generator)
    return threshold(deform(mask, strips_x, zoom_y, strips_y, zoom_x), rule, border)


# ------------------------------------------------------------------------------------------- colour augmentation

def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image.unbind(1)
    value, _ = image.max(1)
    chroma = value - image.min(1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    # The standard closed form: channel n = v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + hue[:, None] * 6) % 6
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value[:, None] - value[:, None] * saturation[:, None] * weight


def _grey(image: torch.Tensor) -> torch.Tensor:
    return (0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3])


def colour_augment(image: torch.Tensor, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1,
                   hue: float = 0.1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A: per-sample brightness, contrast, saturation x U[1 - a, 1 + a] and hue + U[-hue, hue] (fraction of
    the colour circle), in that order, clamped to [0, 1]. image (B, 3, H, W) in [0, 1] -> same shape."""
    batch, device = image.shape[0], image.device
    factors = [_uniform((batch, 1, 1, 1), 1 - a, 1 + a, device, generator) for a in (brightness, contrast,
                                                                                       saturation)]
    shift = _uniform((batch,), -hue, hue, device, generator)
    out = (image.float() * factors[0]).clamp(0, 1)
    mean = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = (mean + (out - mean) * factors[1]).clamp(0, 1)
    grey = _grey(out)
    out = (grey + (out - grey) * factors[2]).clamp(0, 1)
    if hue:
        hsv = _rgb_to_hsv(out)
        hsv = torch.stack([(hsv[:, 0] + shift[:, None, None]) % 1, hsv[:, 1], hsv[:, 2]], 1)
        out = _hsv_to_rgb(hsv)
    return out.clamp(0, 1).to(image.dtype)
