"""The metrics of the papers' tables (keypoint-mask paper sec. 3.2, perturbed-masks paper sec. 4), one value per frame.

L1, PSNR and SSIM take frames as float tensors (N, 3, H, W) in [0, 1]. AKD, MKR and AED take the
``Landmarks`` a detector found on the real and on the generated frames (modules/evaluation/landmarks.py). Every metric
returns one value per frame (N,), NaN where a frame has nothing to measure (no landmark found in both), so a
caller averages over frames (FOMM's protocol) or over videos as it chooses, with ``np.nanmean``.

Two measure steadiness, over consecutive frames of one video: ``jitter`` (the landmarks' acceleration against
the real video's) and ``flicker`` (change where the real video stands still); modules/evaluation/scorer.py feeds
them a video batch after batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# SSIM of Wang et al. (2004): an 11x11 Gaussian window of sigma 1.5 and these stabilising constants, on
# images whose values span 1. scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
# use_sample_covariance=False, data_range=1) computes the same and is the reference of the tests.
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per frame: (N,)."""
    _check(prediction, target)
    return (prediction.double() - target.double()).abs().flatten(1).mean(1)


# The motion region: pixels where the real frame differs from the source image by more than this in some
# channel (values in [0, 1]), i.e. where the body moved. Whole-frame L1 is dominated by the static background,
# which copying the source gets right for free; the motion region is where an animation has to be right.
MOTION_THRESHOLD = 0.1


def motion_region(target: torch.Tensor, source: torch.Tensor, threshold: float = MOTION_THRESHOLD) -> torch.Tensor:
    """(N, C, H, W) real frames and the (1 | N, C, H, W) source -> (N, 1, H, W) bool, where they differ."""
    return (target.double() - source.double()).abs().amax(dim=1, keepdim=True) > threshold


def region_l1(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the pixels of ``region`` (N, 1, H, W) per frame: (N,), NaN where it is empty."""
    _check(prediction, target)
    difference = (prediction.double() - target.double()).abs() * region
    count = region.flatten(1).sum(1) * prediction.shape[1]
    return torch.where(count > 0, difference.flatten(1).sum(1) / count.clamp_min(1), float("nan"))


def psnr(prediction: torch.Tensor, target: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per frame in dB for values in [0, 1]: (N,). Identical frames give max_db
    (the true value is infinite, which would make every average infinite)."""
    _check(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(mse.clamp_min(10 ** (-max_db / 10)))).clamp_max(max_db)


def _gaussian_window(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(3.5 * sigma + 0.5)                    # 11 taps for sigma 1.5, as scikit-image truncates
    positions = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-positions ** 2 / (2 * sigma ** 2))
    return window / window.sum()


def _blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over (N*C, 1, H, W), 'valid' region only (no padding artefacts)."""
    taps = len(window)
    images = F.conv2d(images, window.view(1, 1, taps, 1))
    return F.conv2d(images, window.view(1, 1, 1, taps))


def ssim(prediction: torch.Tensor, target: torch.Tensor, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity per frame, averaged over channels and the valid region: (N,)."""
    _check(prediction, target)
    n, c, h, w = prediction.shape
    window = _gaussian_window(sigma, torch.float64, prediction.device)
    if min(h, w) < len(window):
        raise ValueError(f"SSIM needs frames of at least {len(window)}x{len(window)} pixels, got {h}x{w}")
    x = prediction.double().reshape(n * c, 1, h, w)
    y = target.double().reshape(n * c, 1, h, w)
    mean_x, mean_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mean_x ** 2
    var_y = _blur(y * y, window) - mean_y ** 2
    covariance = _blur(x * y, window) - mean_x * mean_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / \
        ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    return index.reshape(n, -1).mean(1)


# ----------------------------------------------------------------------------------------------------------
# Landmark metrics. Landmarks are normalised to the frame (x / width, y / height), so AKD in the pixels of a
# frame of side ``scale`` is the normalised difference times ``scale``: 256 gives the papers' figures.

def akd(real, generated, scale: float = 256.0) -> np.ndarray:
    """Average keypoint distance per frame: the mean absolute coordinate difference (x and y alike) over the
    landmarks found in both frames, in pixels of a ``scale`` x ``scale`` frame. (T,), NaN if none in both."""
    both = real.found & generated.found                                   # (T, N)
    difference = np.abs(real.points - generated.points) * scale           # (T, N, 2)
    total = (difference * both[..., None]).sum(axis=(1, 2))
    count = both.sum(axis=1) * 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def mkr(real, generated) -> np.ndarray:
    """Missing keypoint rate per frame: the share of landmarks found in the real frame but not in the generated
    one. (T,), NaN where the real frame has none."""
    present = real.found.sum(axis=1)
    missing = (real.found & ~generated.found).sum(axis=1)
    return np.where(present > 0, missing / np.maximum(present, 1), np.nan)


def aed(real, generated) -> np.ndarray:
    """Average Euclidean distance per frame between the identity embeddings of the real and the generated frame.
    (T,), NaN where either has none."""
    if real.embeddings is None or generated.embeddings is None:
        return np.full(len(real.points), np.nan)
    return np.linalg.norm(real.embeddings - generated.embeddings, axis=1)     # NaN rows stay NaN


def _acceleration(points: np.ndarray) -> np.ndarray:
    """(T, N, 2) positions -> (T - 2, N, 2) second differences."""
    return points[2:] - 2 * points[1:-1] + points[:-2]


def jitter(real, generated, scale: float = 256.0) -> np.ndarray:
    """Landmark jitter per frame: how far the generated landmarks' frame-to-frame acceleration (the second
    difference p(t) - 2 p(t-1) + p(t-2)) is from the real ones', the Euclidean distance averaged over the
    landmarks found in both videos in all three frames, in pixels of a ``scale`` x ``scale`` frame. Steady
    motion scores what the real video itself accelerates by: 0 when every landmark moves as the real one
    does, also for a still video. (T,), NaN for the first two frames and where no landmark qualifies."""
    count = len(real.points)
    values = np.full(count, np.nan)
    if count < 3:
        return values
    found = real.found & generated.found
    both = found[2:] & found[1:-1] & found[:-2]                            # (T - 2, N)
    distance = np.linalg.norm(_acceleration(generated.points) - _acceleration(real.points), axis=-1) * scale
    total, number = (distance * both).sum(axis=1), both.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values[2:] = np.where(number > 0, total / np.maximum(number, 1), np.nan)
    return values


def flicker(prediction: torch.Tensor, target: torch.Tensor, threshold: float = 1 / 255) -> torch.Tensor:
    """Temporal flicker per frame: the mean absolute change of the generated frame from the one before, over
    the pixels where the real video does not change (every channel within ``threshold``: the static
    background of the synthetic renderer, exactly). (T,), NaN for the first frame and where no pixel is
    still."""
    _check(prediction, target)
    values = torch.full((len(prediction),), float("nan"), dtype=torch.float64, device=prediction.device)
    if len(prediction) < 2:
        return values
    still = ((target[1:] - target[:-1]).abs().amax(dim=1, keepdim=True) < threshold)      # (T-1, 1, H, W)
    change = (prediction[1:] - prediction[:-1]).abs().mean(dim=1, keepdim=True)           # (T-1, 1, H, W)
    pixels = still.sum(dim=(1, 2, 3))
    total = (change * still).sum(dim=(1, 2, 3)).double()
    values[1:] = torch.where(pixels > 0, total / pixels.clamp(min=1), torch.full_like(total, float("nan")))
    return values
