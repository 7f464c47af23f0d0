"""FOMM's keypoint detector and the structural masks built from it (keypoint-mask paper sec. 2.1-2.2).

``KPDetector`` has FOMM's constructor arguments and exactly FOMM's state-dict keys (its published checkpoints'), so
the ``kp_detector`` entry of an official ``vox-cpk.pth.tar`` / ``taichi-cpk.pth.tar`` loads strictly.
``KeypointMask`` wraps a frozen detector and turns images into the one-channel mask the generators read.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from modules.core.errors import CheckpointError
from modules.core.files import check_finite, first_items, read_checkpoint, resolve_checkpoint, state_dict_problems
from modules.nets.blocks import AntiAliasDownsample, Hourglass, anti_alias_kernel_size, make_coordinate_grid
from modules.nets.keypoints import Keypoints

MaskKind = Literal["heatmap", "circles", "softmax"]


def soft_argmax(probabilities: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) position of each (B, K, h, w) probability map -> (B, K, 2) in [-1, 1]."""
    grid = make_coordinate_grid(*probabilities.shape[-2:], dtype=probabilities.dtype,
                                device=probabilities.device)              # (h, w, 2)
    return (probabilities.unsqueeze(-1) * grid).sum(dim=(2, 3))


def spatial_softmax(raw_heatmap: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over the pixels of each channel (FOMM's semantics of "softmax"): (B, K, h, w)."""
    flat = raw_heatmap.flatten(2) / temperature
    return F.softmax(flat, dim=2).view_as(raw_heatmap)


class KPDetector(nn.Module):
    """FOMM keypoint detector: anti-alias downsample, hourglass, 7x7 heads for keypoints and Jacobians."""

    def __init__(self, block_expansion: int, num_kp: int, num_channels: int, max_features: int,
                 num_blocks: int, temperature: float, estimate_jacobian: bool = False,
                 scale_factor: float = 1, single_jacobian_map: bool = False, pad: int = 0):
        super().__init__()
        self.num_kp = num_kp
        self.temperature = temperature
        self.scale_factor = scale_factor
        self.pad = pad
        self.predictor = Hourglass(block_expansion, in_features=num_channels,
                                   max_features=max_features, num_blocks=num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=7, padding=pad)
        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps,
                                      kernel_size=7, padding=pad)
            # Start every Jacobian at the identity: zero weights, bias (1, 0, 0, 1) per map.
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(self.num_jacobian_maps))
        else:
            self.jacobian = None
        if scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, scale_factor)

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Side lengths the hourglass sees for an image of ``image_size`` (H, W)."""
        return tuple(int(round(side * self.scale_factor)) for side in image_size)

    def heatmap_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Side lengths of the raw heatmaps for an image of ``image_size`` (H, W): 256 -> 58."""
        shrink = self.kp.kernel_size[0] - 1 - 2 * self.pad
        return tuple(side - shrink for side in self.input_size(image_size))

    def forward(self, image: torch.Tensor) -> Keypoints:
        """(B, C, H, W) in [0, 1] -> keypoints, Jacobians and raw heatmaps (B, K, h, w), h = H*scale - 6 + 2*pad."""
        if self.scale_factor != 1:
            image = self.down(image)
        features = self.predictor(image)                                    # (B, F, h+6, w+6)
        raw_heatmap = self.kp(features)                                     # (B, K, h, w)
        probabilities = spatial_softmax(raw_heatmap, self.temperature)
        value = soft_argmax(probabilities)                                  # (B, K, 2)
        jacobian = None
        if self.jacobian is not None:
            batch, num_kp, height, width = raw_heatmap.shape
            maps = self.jacobian(features).view(batch, self.num_jacobian_maps, 4, height, width)
            # Each keypoint's Jacobian is its 4 maps averaged under its softmax heatmap.
            jacobian = (probabilities.unsqueeze(2) * maps).flatten(3).sum(dim=-1)
            jacobian = jacobian.view(batch, num_kp, 2, 2)
        return Keypoints(value=value, jacobian=jacobian, raw_heatmap=raw_heatmap)


# ----------------------------------------------------------------------------------------------------------
# Structural masks (keypoint-mask paper sec. 2.1-2.2)

def normalize_and_pad(maps: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Min-max normalise each sample of (B, 1, h, w) to [0, 1], then zero-pad it centred to ``out_size``."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    # A constant map has no structure; clamp keeps it at 0 instead of dividing by zero.
    normalized = (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)
    pad_h = out_size[0] - maps.shape[-2]
    pad_w = out_size[1] - maps.shape[-1]
    return F.pad(normalized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def draw_gaussians(kp: torch.Tensor, size: tuple[int, int], variance: float) -> torch.Tensor:
    """One Gaussian exp(-0.5 d^2 / variance) per keypoint of (B, K, 2) on an (h, w) grid -> (B, K, h, w)."""
    grid = make_coordinate_grid(*size, dtype=kp.dtype, device=kp.device)    # (h, w, 2)
    squared = (grid[None, None] - kp[:, :, None, None, :]).pow(2).sum(-1)   # (B, K, h, w)
    return torch.exp(-0.5 * squared / variance)


def draw_circles_mask(kp: torch.Tensor, heatmap_size: tuple[int, int], mask_size: tuple[int, int],
                      variance: float = 0.003) -> torch.Tensor:
    """The circles mask of (B, K, 2) keypoints: Gaussians on the heatmap grid, summed, normalised, padded.

    Drawn on the detector's heatmap grid (58x58 at 256 px) in training *and* animation; the original code
    drew on the 64x64 grid at animation time, so its animated masks differed from its training masks.
    """
    circles = draw_gaussians(kp, heatmap_size, variance).sum(dim=1, keepdim=True)
    return normalize_and_pad(circles, mask_size)


class MaskOutput(NamedTuple):
    mask: torch.Tensor                    # (B, 1, H*scale, W*scale) in [0, 1]
    detection: Keypoints                  # what the detector found, the mask's keypoints

    @property
    def keypoints(self) -> torch.Tensor:
        """(B, K, 2) in [-1, 1]: ``detection.value``."""
        return self.detection.value


class KeypointMask(nn.Module):
    """A frozen FOMM detector turned into a structural mask generator.

    kinds: ``heatmap`` (the paper's main mask: the K raw pre-softmax maps summed), ``circles`` (a Gaussian
    drawn at each soft-argmax keypoint, movable for relative motion) and ``softmax`` (the original
    repository's extra variant: the per-channel softmax maps summed). All are min-max normalised per
    sample and zero-padded to the detector's input size, i.e. (B, 1, H*scale, W*scale).
    """

    def __init__(self, detector: KPDetector, kind: MaskKind = "heatmap", kp_variance: float = 0.003):
        super().__init__()
        if kind not in get_args(MaskKind):
            raise ValueError(f"mask kind must be one of {get_args(MaskKind)}, got {kind!r}")
        self.detector = freeze(detector)
        self.kind = kind
        self.kp_variance = kp_variance

    def train(self, mode: bool = True) -> "KeypointMask":
        # The detector is pretrained and frozen: its BatchNorm must keep using (and never update) the
        # running statistics it was trained with, whatever mode the surrounding model is put in.
        super().train(mode)
        self.detector.eval()
        return self

    def mask_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.detector.input_size(image_size)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> MaskOutput:
        """(B, 3, H, W) in [0, 1] -> MaskOutput with the (B, 1, H*scale, W*scale) mask."""
        detection = self.detector(image)
        mask_size = self.mask_size(tuple(image.shape[-2:]))
        if self.kind == "heatmap":
            mask = normalize_and_pad(detection.raw_heatmap.sum(dim=1, keepdim=True), mask_size)
        elif self.kind == "softmax":
            probabilities = spatial_softmax(detection.raw_heatmap, self.detector.temperature)
            mask = normalize_and_pad(probabilities.sum(dim=1, keepdim=True), mask_size)
        else:
            mask = draw_circles_mask(detection.value, tuple(detection.raw_heatmap.shape[-2:]), mask_size,
                                     self.kp_variance)
        return MaskOutput(mask=mask, detection=detection)

    @torch.no_grad()
    def mask_from_keypoints(self, kp: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Circles mask of (possibly moved) keypoints (B, K, 2) for frames of ``image_size`` (H, W)."""
        if self.kind != "circles":
            raise ValueError(f"only the circles mask can be drawn from keypoints; this mask is {self.kind!r}")
        return draw_circles_mask(kp, self.detector.heatmap_size(image_size), self.mask_size(image_size),
                                 self.kp_variance)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the module becomes a fixed function."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------------------------------------
# Loading FOMM checkpoints

def infer_detector_params(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The FOMM detector settings that a ``kp_detector`` state dict was built with, as far as shapes tell.

    ``temperature`` and ``pad`` leave no trace in the weights and are not reported.
    """
    found: dict[str, Any] = {}
    down = sorted({int(k.split(".")[3]) for k in state_dict if k.startswith("predictor.encoder.down_blocks.")})
    if down:
        found["num_blocks"] = len(down)
        first = state_dict.get("predictor.encoder.down_blocks.0.conv.weight")
        if first is not None:
            found["num_channels"] = int(first.shape[1])
        widths = [int(state_dict[f"predictor.encoder.down_blocks.{i}.conv.weight"].shape[0])
                  for i in down if f"predictor.encoder.down_blocks.{i}.conv.weight" in state_dict]
        if widths:
            found["block_expansion"] = widths[0] // 2
            found["max_features"] = max(widths)
    if "kp.weight" in state_dict:
        found["num_kp"] = int(state_dict["kp.weight"].shape[0])
    found["estimate_jacobian"] = "jacobian.weight" in state_dict
    if "jacobian.weight" in state_dict and "num_kp" in found:
        found["single_jacobian_map"] = int(state_dict["jacobian.weight"].shape[0]) == 4 and found["num_kp"] != 1
    if "down.weight" in state_dict:
        size = int(state_dict["down.weight"].shape[-1])
        matches = [1 / n for n in range(2, 17) if anti_alias_kernel_size(1 / n)[0] == size]
        found["scale_factor"] = matches[0] if matches else f"unknown (anti-alias kernel {size}x{size})"
    else:
        found["scale_factor"] = 1
    return found


def load_detector_state(detector: KPDetector, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state_dict`` into ``detector`` (a DataParallel ``module.`` prefix removed); on a mismatch,
    one error line that says what differs.

    The message lists missing and unexpected keys, differing shapes, and the detector settings the
    checkpoint was built with (the config values that would make it load).
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    parts = state_dict_problems(detector, state_dict)
    if parts:
        current = {"block_expansion": detector.predictor.encoder.down_blocks[0].conv.out_channels // 2,
                   "num_kp": detector.num_kp, "scale_factor": detector.scale_factor}
        inferred = infer_detector_params(state_dict)
        hint = ", ".join(f"{k}={v}" for k, v in inferred.items())
        # The settings to use come first: the error line is cut at 400 characters (modules/core/cli.py).
        changes = ", ".join(f"{k}={inferred[k]}" for k in current if k in inferred and inferred[k] != current[k]) \
            or hint
        raise CheckpointError(f"{source}: kp_detector does not fit the configured detector: it was built with "
                              f"{changes} (config: {', '.join(f'{k}={v}' for k, v in current.items())}); set these "
                              f"in model_params.kp_detector_params / common_params (all its settings: {hint}; {'; '.join(parts)})")
    check_finite(state_dict, source, "kp_detector")
    detector.load_state_dict(state_dict, strict=True)


def load_fomm_detector(path: str, detector_kwargs: Mapping[str, Any]) -> KPDetector:
    """Build a KPDetector from FOMM constructor arguments, load ``kp_detector`` from a FOMM checkpoint at ``path``
    (a file, or a run folder: its latest checkpoint) strictly, and return it frozen (eval mode, no gradients)."""
    path = resolve_checkpoint(path)          # a run folder of stage one means its latest checkpoint
    checkpoint = read_checkpoint(path)
    if "kp_detector" not in checkpoint:
        raise CheckpointError(f"{path}: no 'kp_detector' entry (found: {first_items(sorted(checkpoint))}); "
                              f"expected a FOMM checkpoint such as taichi-cpk.pth.tar or vox-cpk.pth.tar")
    if not isinstance(checkpoint["kp_detector"], dict):
        raise CheckpointError(f"{path}: 'kp_detector' is a {type(checkpoint['kp_detector']).__name__}, "
                              f"expected a state dict")
    detector = KPDetector(**detector_kwargs)
    load_detector_state(detector, checkpoint["kp_detector"], path)
    return freeze(detector)
