"""Steady motion and its measures: the One-Euro filter (modules/inference/smoothing.py), jitter and flicker
(modules/evaluation/metrics.py) and their streaming over batches (modules/evaluation.Track)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.evaluation.landmarks import Landmarks
from modules.evaluation.metrics import flicker, jitter
from modules.evaluation.scorer import Target, Track
from modules.inference.smoothing import KeypointSmoother, OneEuroFilter, one_euro
from modules.nets.keypoints import Keypoints

RATE = 25.0


def smooth_track(frames: int = 200, points: int = 5, amplitude: float = 0.2) -> torch.Tensor:
    """(T, K, 2) slow sinusoidal motion in [-1, 1] at 0.25 Hz, like a body's joints (peak speed 0.31 units/s:
    a sixth of the frame per second)."""
    t = torch.arange(frames, dtype=torch.float64)[:, None, None] / RATE
    phase = torch.arange(points * 2, dtype=torch.float64).view(1, points, 2)
    return amplitude * torch.sin(2 * torch.pi * 0.25 * t + phase)


def rms(x: torch.Tensor) -> float:
    return x[10:].pow(2).mean().sqrt().item()                          # after the filter's first frames


def test_one_euro_removes_the_jitter_of_a_smooth_track_and_lags_about_a_frame():
    clean = smooth_track()
    noisy = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    filtered = one_euro(1.0, RATE).filter_sequence(noisy)
    # jitter (frame-to-frame acceleration of the error) falls by more than 2x; the position error does not grow
    assert rms((filtered - clean).diff(n=2, dim=0)) < rms((noisy - clean).diff(n=2, dim=0)) / 2
    assert rms(filtered - clean) < rms(noisy - clean)
    # its cost, on the clean track: an error of about one frame's motion (the error over the RMS speed)
    lag = rms(one_euro(1.0, RATE).filter_sequence(clean) - clean) / rms(clean.diff(dim=0))
    assert lag < 1.5
    # stronger smoothing steadies more
    stronger = one_euro(4.0, RATE).filter_sequence(noisy)
    assert rms(stronger.diff(n=2, dim=0)) < rms(filtered.diff(n=2, dim=0))


def test_one_euro_is_online_batches_give_the_same_as_one_pass_and_a_constant_passes_through():
    track = smooth_track(40) + 0.01 * torch.randn(40, 5, 2, dtype=torch.float64)
    whole = one_euro(2.0, RATE).filter_sequence(track)
    streaming = one_euro(2.0, RATE)
    parts = torch.cat([streaming.filter_sequence(part) for part in torch.split(track, [7, 8, 25])])
    assert torch.equal(whole, parts)
    still = torch.full((30, 3), 0.25, dtype=torch.float64)
    assert torch.allclose(OneEuroFilter(RATE).filter_sequence(still), still)
    with pytest.raises(ValueError, match="positive"):
        one_euro(0.0, RATE)


def test_keypoint_smoother_filters_values_and_jacobians_and_keeps_dtype_and_shape():
    value = smooth_track(16, 10).float()
    jacobian = torch.eye(2).expand(16, 10, 2, 2) + 0.05 * torch.randn(16, 10, 2, 2)
    smoother = KeypointSmoother(1.0, RATE)
    out = smoother(Keypoints(value[:8], jacobian[:8]))
    out2 = smoother(Keypoints(value[8:], jacobian[8:]))
    assert out.value.shape == (8, 10, 2) and out.value.dtype == torch.float32 and out2.jacobian.shape == (8, 10, 2, 2)
    assert torch.equal(out.value[0], value[0])                           # the first frame passes as it is
    assert (out2.jacobian - torch.eye(2)).abs().mean() < (jacobian[8:] - torch.eye(2)).abs().mean()


def landmarks(points: np.ndarray) -> Landmarks:
    return Landmarks(points, np.ones(points.shape[:2], bool))


def test_jitter_is_zero_for_a_still_video_and_grows_with_the_noise_added():
    rng = np.random.default_rng(0)
    still = np.full((20, 15, 2), 0.5)
    assert np.isnan(jitter(landmarks(still), landmarks(still))[:2]).all()
    assert np.nanmax(jitter(landmarks(still), landmarks(still))) == 0
    moving = smooth_track(20, 15).numpy() + 0.5
    assert np.nanmax(jitter(landmarks(moving), landmarks(moving))) < 1e-12      # same motion: no jitter
    values = [np.nanmean(jitter(landmarks(moving), landmarks(moving + rng.normal(0, s, moving.shape))))
              for s in (0.001, 0.004, 0.016)]
    assert 0 < values[0] < values[1] < values[2]
    # in 256-px pixels: noise of sigma s per coordinate gives second differences of sigma s * sqrt(6)
    assert values[1] == pytest.approx(0.004 * 256 * np.sqrt(6) * np.sqrt(np.pi / 2), rel=0.15)


def test_flicker_measures_change_only_where_the_real_video_stands_still():
    real = torch.zeros(4, 3, 8, 8)
    real[:, :, :4] = torch.arange(4.0).view(4, 1, 1, 1) / 4             # the top half changes, the bottom is still
    generated = real.clone()
    assert torch.isnan(flicker(generated, real)[0]) and flicker(generated, real)[1:].abs().max() == 0
    generated[2, :, 4:] += 0.1                                           # one frame flickers in the still half
    assert flicker(generated, real)[1:].tolist() == pytest.approx([0, 0.1, 0.1])


def test_track_gives_the_same_jitter_and_flicker_batch_by_batch_as_over_the_whole_video():
    rng = np.random.default_rng(1)
    real_points = smooth_track(12, 15).numpy() + 0.5
    mine = real_points + rng.normal(0, 0.01, real_points.shape)
    real_frames, frames = torch.rand(12, 3, 8, 8), torch.rand(12, 3, 8, 8)
    real_frames[:, :, :2] = 0.5                                          # still rows
    whole_jitter = jitter(landmarks(real_points), landmarks(mine))
    whole_flicker = flicker(frames, real_frames).numpy()
    track, pieces = Track(), []
    for start, stop in ((0, 5), (5, 6), (6, 12)):
        target = Target(real_frames[start:stop], landmarks(real_points[start:stop]))
        pieces.append(track.update(frames[start:stop], target, landmarks(mine[start:stop])))
    np.testing.assert_allclose(np.concatenate([p["jitter"] for p in pieces]), whole_jitter)
    np.testing.assert_allclose(np.concatenate([p["flicker"] for p in pieces]), whole_flicker, rtol=1e-6)
