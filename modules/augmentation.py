"""FOMM's training augmentation: random time and horizontal flips and colour jitter, one draw per clip.

Each draw comes from the item's own generator (frames_dataset.item_rng), so an item is the same in any
process; the flips can be applied to keypoint labels too (the labelled detector, mirrored left and right).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from modules.config import AugmentationParams
from modules.errors import UserError



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
