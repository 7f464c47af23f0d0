"""Training augmentation.

``Augmentation``: FOMM's random time and horizontal flips and colour jitter, one draw per clip. Each draw
comes from the item's own generator (modules.data.dataset.item_rng), so an item is the same in any process; the
flips can be applied to keypoint labels too (the labelled detector, mirrored left and right).

``augment_batch``: the keypoint regressor's (scripts/train_keypoint_regressor.py) label-preserving changes,
one draw per sample of a batch: a similarity transform moves image and keypoints alike; colour, blur and
noise change pixels only. (The perturbed-masks family's per-sample colour change ``A`` is the paper's own,
modules/training/perturbations.py.)
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modules.config.sections import AugmentationParams
from modules.core.errors import UserError


def _adjust_contrast(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's adjust_contrast: each frame (n, 3, H, W) blended with its own mean grey.

    The mean is a float64 numpy sum: a torch reduction may round differently with another thread count (the
    main process against a DataLoader worker), and an item must not depend on where it is made.
    """
    import torchvision.transforms.v2.functional as TF

    grey = TF.rgb_to_grayscale(frames).numpy().reshape(len(frames), -1)
    means = torch.from_numpy(grey.mean(axis=1, dtype=np.float64).astype(np.float32)).view(-1, 1, 1, 1)
    return (factor * frames + (1 - factor) * means).clamp_(0, 1)


class AugmentationDraw(NamedTuple):
    """The random parameters of one item's augmentation (factors of 1 / hue 0 mean "unchanged")."""
    time_flip: bool
    horizontal_flip: bool
    jitter_order: tuple[int, ...]     # permutation of (brightness, contrast, saturation, hue), as torchvision
    brightness: float
    contrast: float
    saturation: float
    hue: float


class Augmentation:
    """FOMM's flips and colour jitter, one draw applied to every frame of a clip.

    Horizontal and time flip each with probability 0.5 (independently: FOMM never did both at once); the
    jitter has torchvision ColorJitter's semantics: factors uniform in [max(0, 1 - b), 1 + b] for brightness,
    contrast and saturation, a hue shift uniform in [-h, h] of a full turn, applied in a random order.
    """

    def __init__(self, params: AugmentationParams):
        self.horizontal_flip = params.flip_param.horizontal_flip
        self.time_flip = params.flip_param.time_flip
        jitter = params.jitter_param
        for key in ("brightness", "contrast", "saturation", "hue"):
            value = getattr(jitter, key)
            top = 0.5 if key == "hue" else math.inf
            if not 0 <= value <= top:
                raise UserError(f"dataset_params.augmentation_params.jitter_param.{key}: expected a number in "
                                f"[0, {top}], got {value}")
        self.jitter = jitter

    def draw(self, rng: np.random.Generator) -> AugmentationDraw:
        """The parameters; always the same count of numbers from ``rng``, whatever is enabled."""
        u_time, u_flip = rng.random(2)
        order = tuple(int(i) for i in rng.permutation(4))
        u = rng.random(4)
        j = self.jitter

        def factor(b: float, u: float) -> float:
            low = max(0.0, 1 - b)
            return low + (1 + b - low) * u

        return AugmentationDraw(
            time_flip=self.time_flip and u_time < 0.5, horizontal_flip=self.horizontal_flip and u_flip < 0.5,
            jitter_order=order, brightness=factor(j.brightness, u[0]), contrast=factor(j.contrast, u[1]),
            saturation=factor(j.saturation, u[2]), hue=j.hue * (2 * u[3] - 1))

    def apply(self, frames: torch.Tensor, draw: AugmentationDraw) -> torch.Tensor:
        """frames (n, 3, H, W) in [0, 1] -> the same shape and range, every frame transformed alike."""
        import torchvision.transforms.v2.functional as TF

        if draw.time_flip:
            frames = frames.flip(0)          # the clip reversed: for a pair, source and driving swap
        if draw.horizontal_flip:
            frames = frames.flip(-1)
        operations = [(TF.adjust_brightness, draw.brightness, self.jitter.brightness),
                      (_adjust_contrast, draw.contrast, self.jitter.contrast),
                      (TF.adjust_saturation, draw.saturation, self.jitter.saturation),
                      (TF.adjust_hue, draw.hue, self.jitter.hue)]
        for i in draw.jitter_order:
            function, value, enabled = operations[i]
            if enabled:
                frames = function(frames, value)
        return frames.clamp_(0, 1).contiguous()

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.apply(frames, self.draw(rng))

    @staticmethod
    def apply_to_keypoints(keypoints: np.ndarray, visible: np.ndarray, draw: AugmentationDraw,
                           mirror: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The flips of ``draw`` on labels (n, K, 2) in [-1, 1] and their visibility (n, K), as ``apply`` flips
        the frames: reversed in time; mirrored (x -> -x, exact for pixel centres at -1 and +1) with each left
        point swapped with its right twin (``mirror[k]`` is the keypoint that k becomes in the mirror image)."""
        if draw.time_flip:
            keypoints, visible = keypoints[::-1], visible[::-1]
        if draw.horizontal_flip:
            keypoints = keypoints[:, list(mirror)] * np.array([-1.0, 1.0], dtype=keypoints.dtype)
            visible = visible[:, list(mirror)]
        return np.ascontiguousarray(keypoints), np.ascontiguousarray(visible)


# ----------------------------------------------------------------------------------------------------------
# The keypoint regressor's batch augmentation

# Augmentation ranges. The similarity transform is small next to the figure (standing height 64-86% of the
# frame), so a keypoint rarely leaves the frame; those that do are left out of the loss.
SCALE_RANGE = (0.9, 1.1)
ROTATION_MAX = 0.15             # radians
SHIFT_MAX = 3.0 / 64            # frame fractions (3 px at 64)
BRIGHTNESS_RANGE = (0.75, 1.25)
CONTRAST_RANGE = (0.75, 1.25)
SATURATION_RANGE = (0.7, 1.3)
HUE_MAX = math.pi / 6           # rotation about the grey axis of RGB space
BLUR_PROBABILITY = 0.5
BLUR_SIGMA_RANGE = (0.3, 1.2)   # pixels of the model's input
NOISE_MAX = 0.03                # standard deviation of added Gaussian noise, in [0, 1] units


def _uniform(generator: torch.Generator, batch: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def _hue_rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) rotations of RGB space about the grey axis (Rodrigues' formula)."""
    axis = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    cos, sin = angles.cos()[:, None, None], angles.sin()[:, None, None]
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(axis, axis)


def _gaussian_blur(frames: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image: frames (B, C, H, W), sigmas (B,) in pixels."""
    batch, channels, height, width = frames.shape
    radius = max(1, int(math.ceil(2 * float(sigmas.max()))))
    taps = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)       # (k,)
    kernels = torch.exp(-0.5 * (taps / sigmas.to(frames)[:, None]) ** 2)                       # (B, k)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, k)
    # One grouped conv over the whole batch: every (image, channel) plane is its own group.
    planes = F.pad(frames.reshape(1, batch * channels, height, width), (radius,) * 4, mode="replicate")
    planes = F.conv2d(planes, kernels[:, None, None, :], groups=batch * channels)              # along x
    planes = F.conv2d(planes, kernels[:, None, :, None], groups=batch * channels)              # along y
    return planes.view(batch, channels, height, width)


def augment_batch(frames: torch.Tensor, keypoints: torch.Tensor, generator: torch.Generator,
                  scale_range: tuple[float, float] = SCALE_RANGE, rotation_max: float = ROTATION_MAX,
                  shift_max: float = SHIFT_MAX) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random label-preserving changes of a batch, each sample its own (the keypoint regressor's training).

    frames (B, 3, S, S) float in [0, 1]; keypoints (B, K, 2) normalised. Returns the new frames, the keypoints
    moved with them and a (B, K) float mask of those still inside the frame. All random numbers come from
    ``generator`` (CPU) so a seed fixes the whole sequence of batches. The geometry's ranges default to the
    regressor's (``SCALE_RANGE``, ``ROTATION_MAX``, ``SHIFT_MAX``); the labelled detector passes its config's.
    """
    batch, device = frames.shape[0], frames.device
    # Similarity transform in grid_sample's [-1, 1] coordinates (x = 2 * normalised - 1; the frames are square,
    # so a rotation there is a rotation of the image): keypoint u -> M u + d, and the grid samples the input
    # at M^-1 (u_out - d) for each output position u_out.
    scale = _uniform(generator, batch, *scale_range)
    angle = _uniform(generator, batch, -rotation_max, rotation_max)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (2 * shift_max)              # (B, 2)
    cos, sin = angle.cos(), angle.sin()
    forward = scale[:, None, None] * torch.stack([torch.stack([cos, -sin], -1),
                                                  torch.stack([sin, cos], -1)], 1)             # (B, 2, 2)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], dim=2).to(device)            # (B, 2, 3)
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    # Border padding: the backgrounds are smooth textures, so repeating the edge looks like more background.
    frames = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
    centred = keypoints * 2 - 1                                                                # (B, K, 2)
    moved = centred @ forward.to(device).transpose(1, 2) + shift.to(device)[:, None, :]
    keypoints = (moved + 1) / 2
    # The soft-argmax cannot reach past the outermost heatmap cell centres; such keypoints get no loss.
    inside = ((keypoints > 0.02) & (keypoints < 0.98)).all(dim=-1).float()                    # (B, K)

    # Colour: brightness, contrast about the image mean, saturation about the grey value, hue rotation.
    brightness = _uniform(generator, batch, *BRIGHTNESS_RANGE).to(device)[:, None, None, None]
    contrast = _uniform(generator, batch, *CONTRAST_RANGE).to(device)[:, None, None, None]
    saturation = _uniform(generator, batch, *SATURATION_RANGE).to(device)[:, None, None, None]
    hue = _hue_rotation(_uniform(generator, batch, -HUE_MAX, HUE_MAX)).to(device)              # (B, 3, 3)
    frames = torch.einsum("bij,bjhw->bihw", hue, frames)
    grey = frames.mean(dim=1, keepdim=True)                                                    # (B, 1, S, S)
    frames = grey + saturation * (frames - grey)
    mean = frames.mean(dim=(1, 2, 3), keepdim=True)
    frames = ((frames - mean) * contrast + mean) * brightness

    # Blur half of the batch (a sigma of 0.05 px leaves an image as it is), then sensor-like noise.
    blurred = torch.rand(batch, generator=generator) < BLUR_PROBABILITY
    sigmas = torch.where(blurred, _uniform(generator, batch, *BLUR_SIGMA_RANGE), torch.full((batch,), 0.05))
    frames = _gaussian_blur(frames, sigmas)
    noise = _uniform(generator, batch, 0.0, NOISE_MAX)[:, None, None, None]
    frames = frames + noise.to(device) * torch.randn(frames.shape, generator=generator).to(device)
    return frames.clamp(0, 1), keypoints, inside
