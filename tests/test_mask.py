"""KeypointMask: the paper's masks equal the original code's, and their invariants hold."""
from __future__ import annotations

import pytest
import torch

from modules.nets.keypoint_detector import (KeypointMask, KPDetector, draw_circles_mask, draw_gaussians,
                                            normalize_and_pad, spatial_softmax)


@pytest.fixture
def detector(original):
    detector = KPDetector(**original["kp_detector_params"])
    detector.load_state_dict(original["kp_detector"], strict=True)
    return detector


@pytest.mark.parametrize("kind", ["heatmap", "circles"])
def test_masks_equal_the_original_implementation(detector, original, kind):
    mask = KeypointMask(detector, kind)(original["input"]).mask
    assert mask.shape == (2, 1, 16, 16)
    torch.testing.assert_close(mask, original[f"{kind}_mask"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["heatmap", "circles", "softmax"])
def test_mask_range_shape_and_padding(detector, kind):
    images = torch.rand(3, 3, 64, 96)
    mask = KeypointMask(detector, kind)(images).mask
    assert mask.shape == (3, 1, 16, 24)                              # (B, 1, H/4, W/4)
    flat = mask.flatten(1)
    torch.testing.assert_close(flat.max(dim=1).values, torch.ones(3))
    assert flat.min() >= 0
    # 7x7 head without padding: 3 px of zeros on every side.
    assert mask[:, :, :3].abs().sum() == 0 and mask[:, :, -3:].abs().sum() == 0
    assert mask[:, :, :, :3].abs().sum() == 0 and mask[:, :, :, -3:].abs().sum() == 0


def test_heatmap_is_the_normalised_channel_sum(detector):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        raw = detector.eval()(images).raw_heatmap                      # (2, K, 10, 10)
    summed = raw.sum(dim=1)
    for b in range(2):
        expected = (summed[b] - summed[b].min()) / (summed[b].max() - summed[b].min())
        got = KeypointMask(detector, "heatmap")(images).mask[b, 0, 3:-3, 3:-3]
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_softmax_mask_is_the_normalised_sum_of_spatial_softmaxes(detector):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        raw = detector.eval()(images).raw_heatmap
    summed = spatial_softmax(raw, 0.1).sum(dim=1, keepdim=True)
    torch.testing.assert_close(KeypointMask(detector, "softmax")(images).mask, normalize_and_pad(summed, (16, 16)))
    assert torch.allclose(spatial_softmax(raw, 0.1).flatten(2).sum(-1), torch.ones(2, 4))


def test_gaussian_peaks_at_its_keypoint():
    size = (58, 58)
    # keypoints on grid points (i / 57 * 2 - 1), one per channel
    pixels = torch.tensor([[10, 20], [0, 57], [40, 3]])
    kp = (2 * pixels.float() / 57 - 1).unsqueeze(0)                    # (1, 3, 2) as (x, y)
    maps = draw_gaussians(kp, size, 0.003)
    for k, (x, y) in enumerate(pixels.tolist()):
        row, col = divmod(int(maps[0, k].argmax()), size[1])
        assert (col, row) == (x, y)
        assert maps[0, k, row, col] == pytest.approx(1.0)


def test_circles_drawn_from_the_detectors_keypoints_reproduce_its_mask(detector):
    images = torch.rand(2, 3, 64, 64)
    circles = KeypointMask(detector, "circles")
    out = circles(images)
    torch.testing.assert_close(circles.mask_from_keypoints(out.keypoints, (64, 64)), out.mask)
    # the same grid as in training: heatmap size 10 for 16 px detector input, padded to 16
    torch.testing.assert_close(draw_circles_mask(out.keypoints, (10, 10), (16, 16)), out.mask)


def test_moved_keypoints_move_the_circles(detector):
    circles = KeypointMask(detector, "circles")
    kp = torch.tensor([[[-0.5, -0.5]]])
    moved = torch.tensor([[[0.5, 0.5]]])
    before = circles.mask_from_keypoints(kp, (64, 64))
    after = circles.mask_from_keypoints(moved, (64, 64))
    assert int(before.argmax()) != int(after.argmax())
    torch.testing.assert_close(after, before.flip(-1).flip(-2))       # symmetric move, symmetric mask


def test_only_circles_can_be_drawn_from_keypoints(detector):
    with pytest.raises(ValueError, match="only the circles mask"):
        KeypointMask(detector, "heatmap").mask_from_keypoints(torch.zeros(1, 4, 2), (64, 64))


def test_detector_stays_frozen_in_eval_mode(detector):
    mask = KeypointMask(detector, "heatmap")
    mask.train()
    assert mask.training and not mask.detector.training
    assert all(not p.requires_grad for p in mask.parameters())
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    assert not mask(images).mask.requires_grad                       # no graph is built through it
