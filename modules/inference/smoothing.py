"""Steady motion: an online low-pass filter for keypoint tracks and crop boxes (``--smooth STRENGTH``).

Detected keypoints jitter from frame to frame; relative motion hands that jitter straight to the animation.
The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is an exponential smoother whose cut-off frequency
rises with the signal's speed: still keypoints are smoothed hard (no jitter), fast ones lightly (little lag).
It was chosen over a constant-velocity Kalman filter by ``benchmarks/smoothing_filters.py``: on the
synthetic dataset's joint tracks with noise added, both, tuned, leave the same error (0.0072 of 0.0100 left
at noise 0.01; 0.0129 against 0.0132 at 0.02), but the Kalman filter must be told the noise level and
One-Euro need not, and One-Euro's single strength knob trades jitter for lag the same way on any video.

The filter is online: each frame's output depends only on that frame and the filter's state, so a stream
of any length is filtered in constant memory, batch after batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from modules.nets.keypoints import Keypoints

# At strength 1: still points are smoothed with a 1.5 Hz cut-off, and the cut-off grows by BETA Hz per unit
# of speed (keypoint coordinates in [-1, 1], so 1 unit/s crosses half the frame in a second). Strength s
# divides both: higher = steadier and slower to follow. Tuned on the synthetic joint tracks (module doc).
MIN_CUTOFF_HZ = 1.5
BETA = 8.0
DERIVATIVE_CUTOFF_HZ = 1.0


def _alpha(cutoff: torch.Tensor | float, rate: float) -> torch.Tensor | float:
    """The exponential smoothing factor of a first-order low-pass filter at ``cutoff`` Hz, sampled at ``rate``."""
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * rate)


class OneEuroFilter:
    """One-Euro filter of a stream of tensors of one shape (each element filtered on its own).

    ``filter(x)`` takes one sample; ``filter_sequence(xs)`` the samples (T, ...) in time order.
    """

    def __init__(self, rate: float, min_cutoff: float = MIN_CUTOFF_HZ, beta: float = BETA,
                 derivative_cutoff: float = DERIVATIVE_CUTOFF_HZ):
        if rate <= 0:
            raise ValueError(f"frame rate {rate}: expected a positive number of frames per second")
        self.rate, self.min_cutoff, self.beta, self.derivative_cutoff = rate, min_cutoff, beta, derivative_cutoff
        self.value: Optional[torch.Tensor] = None          # the last output
        self.speed: Optional[torch.Tensor] = None          # its smoothed derivative, units per second

    def filter(self, sample: torch.Tensor) -> torch.Tensor:
        sample = sample.double()
        if self.value is None:
            self.value, self.speed = sample.clone(), torch.zeros_like(sample)
            return sample.clone()
        raw_speed = (sample - self.value) * self.rate
        self.speed = self.speed + _alpha(self.derivative_cutoff, self.rate) * (raw_speed - self.speed)
        cutoff = self.min_cutoff + self.beta * self.speed.abs()
        self.value = self.value + _alpha(cutoff, self.rate) * (sample - self.value)
        return self.value.clone()

    def filter_sequence(self, samples: torch.Tensor) -> torch.Tensor:
        """(T, ...) in time order -> the filtered (T, ...), in ``samples``' dtype; the state carries on."""
        return torch.stack([self.filter(sample) for sample in samples]).to(samples.dtype)


def one_euro(strength: float, rate: float) -> OneEuroFilter:
    """The filter ``--smooth strength`` means at ``rate`` frames per second (strength > 0)."""
    if strength <= 0:
        raise ValueError(f"smoothing strength {strength}: expected a positive number (0 turns smoothing off)")
    return OneEuroFilter(rate, min_cutoff=MIN_CUTOFF_HZ / strength, beta=BETA / strength)


class KeypointSmoother:
    """Filters the driving keypoints of a stream, batch by batch in time order: ``smoother(kp) -> kp``
    (values (B, K, 2) and, where the detector has them, Jacobians (B, K, 2, 2), each with its own filter).
    The families' ``animate(..., smooth=smoother)`` applies it to the detected driving keypoints before
    relative or absolute motion uses them."""

    def __init__(self, strength: float, rate: float):
        self.values, self.jacobians = one_euro(strength, rate), one_euro(strength, rate)

    def __call__(self, keypoints: Keypoints) -> Keypoints:
        value = self.values.filter_sequence(keypoints.value.float()).to(keypoints.value.dtype)
        jacobian = keypoints.jacobian
        if jacobian is not None:
            jacobian = self.jacobians.filter_sequence(jacobian.float()).to(jacobian.dtype)
        return Keypoints(value, jacobian)
