"""L1, PSNR and SSIM on known inputs, and SSIM against scikit-image's reference implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.evaluation.metrics import l1, psnr, ssim


def frames(n=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=generator),
                                             size=(size, size), mode="bilinear", align_corners=False)
    return smooth.clamp(0, 1)


def test_identical_frames_give_l1_0_ssim_1_and_capped_psnr():
    video = frames()
    assert torch.equal(l1(video, video), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(ssim(video, video), torch.ones(3, dtype=torch.float64))
    assert torch.equal(psnr(video, video), torch.full((3,), 100.0, dtype=torch.float64))


def test_known_differences():
    target = torch.full((2, 3, 16, 16), 0.5)
    shifted = target + 0.1                                        # every pixel off by 0.1
    assert torch.allclose(l1(shifted, target), torch.full((2,), 0.1, dtype=torch.float64))
    assert torch.allclose(psnr(shifted, target), torch.full((2,), 20.0, dtype=torch.float64))   # -10 log10(0.01)
    # a video moved by one pixel: L1 is the mean absolute difference of neighbouring pixels
    video = frames(2, 32)
    moved = torch.roll(video, shifts=1, dims=-1)
    expected = (video[..., 1:] - video[..., :-1]).abs().sum(dim=(1, 2, 3)) + \
        (video[..., 0] - video[..., -1]).abs().sum(dim=(1, 2))
    assert torch.allclose(l1(moved, video), expected.double() / video[0].numel())
    assert (ssim(moved, video) < 1).all() and (ssim(moved, video) > ssim(torch.rand_like(video), video)).all()


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    prediction, target = frames(2, 48, seed=1), frames(2, 48, seed=2)
    prediction = (0.7 * prediction + 0.3 * target).clamp(0, 1)
    ours = ssim(prediction, target)
    for i in range(2):
        reference = structural_similarity(prediction[i].permute(1, 2, 0).numpy().astype(np.float64),
                                          target[i].permute(1, 2, 0).numpy().astype(np.float64),
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0, channel_axis=2)
        assert math.isclose(ours[i].item(), reference, abs_tol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_motion_region_l1_counts_only_where_the_truth_left_the_source():
    from modules.evaluation.metrics import motion_region, region_l1
    from modules.evaluation.scorer import FrameScorer

    source = torch.zeros(1, 3, 16, 16)
    truth = torch.zeros(2, 3, 16, 16)
    truth[0, 1, :2, :2] = 0.5                      # frame 0: 4 pixels moved (in one channel)
    truth[1, 0, 0, 0] = 0.05                       # frame 1: below the 0.1 threshold, no motion region
    region = motion_region(truth, source)
    assert region.shape == (2, 1, 16, 16) and region[0].sum() == 4 and region[1].sum() == 0
    prediction = truth.clone()
    prediction[0, :, 3, 3] = 1.0                   # an error outside the region does not count
    prediction[0, 2, 0, 0] = 0.3                   # one inside: 0.3 over 4 pixels x 3 channels
    values = region_l1(prediction, truth, region)
    assert values[0].item() == pytest.approx(0.3 / 12) and torch.isnan(values[1])
    # the scorer adds it as motion_l1 when the target knows its source, NaN otherwise
    from types import SimpleNamespace

    config = SimpleNamespace(metrics_params=SimpleNamespace(landmarks="none", min_landmark_size=128))
    scorer = FrameScorer(config, (16, 16))
    scores = scorer.score(prediction, scorer.target(truth, source=source))
    assert scores["motion_l1"][0] == pytest.approx(0.3 / 12)
    assert np.isnan(scorer.score(prediction, scorer.target(truth))["motion_l1"]).all()
