"""Landmark metrics (AKD, MKR, AED), the detectors behind them, and why a metric is skipped.

The detector tests use scikit-image's astronaut photograph (a real face and upper body, public domain,
shipped inside scikit-image) and need the metrics extra, which CI installs; without it they are skipped.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from modules.evaluation.landmarks import Landmarks, MetricsUnavailable, make_landmarker, normalised_pose
from modules.evaluation.metrics import aed, akd, mkr
from modules.evaluation.scorer import FrameScorer, frame_mean

WINDOW = 384            # crop of the 512x512 astronaut, resized to SIZE
SIZE = 256


def marks(points, found=None, embeddings=None) -> Landmarks:
    points = np.asarray(points, float)
    found = np.ones(points.shape[:2], bool) if found is None else np.asarray(found)
    return Landmarks(points, found, None if embeddings is None else np.asarray(embeddings, float))


# ---------------------------------------------------------------------------------------------------------
# The metrics on known landmarks

def test_akd_is_the_mean_absolute_coordinate_difference_in_256_px_pixels_over_points_found_in_both():
    real = marks([[[0.5, 0.5], [0.25, 0.25], [0.1, 0.1]]])
    moved = marks([[[0.5 + 2 / 256, 0.5], [0.25, 0.25 + 4 / 256], [0.9, 0.9]]], found=[[True, True, False]])
    # points 0 and 1 are in both: |dx|, |dy| = (2, 0) and (0, 4) px -> mean 1.5 px; point 2 is ignored
    assert akd(real, moved)[0] == pytest.approx(1.5)
    assert akd(real, real)[0] == 0
    assert akd(real, moved, scale=512)[0] == pytest.approx(3.0)


def test_akd_and_mkr_are_nan_where_there_is_nothing_to_measure_and_the_mean_leaves_those_frames_out():
    real = marks(np.zeros((2, 3, 2)), found=[[True, True, True], [False, False, False]])
    generated = marks(np.full((2, 3, 2), 1 / 256), found=[[True, False, False], [True, True, True]])
    assert akd(real, generated)[0] == pytest.approx(1.0) and np.isnan(akd(real, generated)[1])
    rate = mkr(real, generated)
    assert rate[0] == pytest.approx(2 / 3) and np.isnan(rate[1])
    assert frame_mean(rate) == pytest.approx(2 / 3)
    assert frame_mean([np.nan]) is None


def test_aed_is_the_euclidean_distance_of_embeddings_and_nan_without_a_face():
    real = marks(np.zeros((2, 1, 2)), embeddings=[[0.0, 0.0], [1.0, 1.0]])
    generated = marks(np.zeros((2, 1, 2)), embeddings=[[3.0, 4.0], [np.nan, np.nan]])
    distance = aed(real, generated)
    assert distance[0] == pytest.approx(5.0) and np.isnan(distance[1])
    assert np.isnan(aed(marks(np.zeros((1, 1, 2))), marks(np.zeros((1, 1, 2))))).all()   # body: no embeddings


def test_normalised_pose_ignores_position_and_size():
    points = np.array([[10.0, 10.0], [30.0, 12.0], [20.0, 40.0], [12.0, 25.0]])
    assert np.allclose(normalised_pose(points), normalised_pose(3 * points + [50.0, -7.0]))


# ---------------------------------------------------------------------------------------------------------
# Why metrics are skipped

def test_landmark_metrics_are_skipped_with_the_reason(tiny_config, tmp_path, monkeypatch):
    tiny_config.metrics_params.keypoint_regressor = str(tmp_path / "keypoint-regressor.pth")   # none trained
    scorer = FrameScorer(tiny_config, (64, 64))
    assert set(scorer.skipped) == {"akd", "mkr", "aed", "jitter"}
    assert scorer.metrics == ["l1", "psnr", "ssim", "motion_l1", "flicker"]
    assert scorer.skipped["akd"] in scorer.skipped["jitter"]          # jitter's reason carries the landmarks'
    assert str(tmp_path) in scorer.skipped["akd"] and "train_keypoint_regressor.py" in scorer.skipped["akd"]

    tiny_config.metrics_params.landmarks = "body"
    with pytest.raises(MetricsUnavailable, match="64x64 frames.*at least 128 px"):
        make_landmarker(tiny_config, (64, 64))
    tiny_config.metrics_params.landmarks = "none"
    assert "none" in FrameScorer(tiny_config, (64, 64)).skipped["mkr"]

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mediapipe", "dlib") else real_find_spec(name, *a))
    for kind in ("body", "face"):
        tiny_config.metrics_params.landmarks = kind
        with pytest.raises(MetricsUnavailable, match=r"pip install -e \.\[metrics\]"):
            make_landmarker(tiny_config, (256, 256))


def test_pixel_metrics_of_identical_and_shifted_frames(tiny_config):
    tiny_config.metrics_params.landmarks = "none"
    scorer = FrameScorer(tiny_config, (64, 64))
    frames = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    same = scorer.score(frames, scorer.target(frames))
    assert np.allclose(same["l1"], 0) and np.allclose(same["ssim"], 1)
    brighter = scorer.score((frames + 0.1).clamp(max=1), scorer.target(frames))
    assert np.allclose(brighter["l1"], (frames + 0.1).clamp(max=1).sub(frames).mean().item(), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# The detectors on a real photograph: a shifted frame moves the landmarks by the shift

def astronaut_crops(shift: tuple[int, int]) -> np.ndarray:
    """Two 256x256 frames: a 384 px window of the photograph, and the window moved by ``shift`` (dx, dy) px of
    the photograph, so the content moves by -shift * 256 / 384 px in the frame."""
    from skimage.data import astronaut

    photo = astronaut()
    dx, dy = shift
    windows = [photo[40:40 + WINDOW, 60:60 + WINDOW], photo[40 + dy:40 + dy + WINDOW, 60 + dx:60 + dx + WINDOW]]
    return np.stack([np.asarray(Image.fromarray(w).resize((SIZE, SIZE), Image.BICUBIC)) for w in windows])


@pytest.mark.parametrize("kind", ["face", "body"])
def test_landmarks_of_a_shifted_photograph_move_by_the_shift(kind):
    pytest.importorskip("mediapipe" if kind == "body" else "dlib", reason="needs the metrics extra")
    from modules.evaluation.landmarks import BodyLandmarks, FaceLandmarks

    detector = FaceLandmarks() if kind == "face" else BodyLandmarks()
    shift = (24, 12)                                              # photograph pixels: 16 and 8 px in the frame
    found = detector.detect(astronaut_crops(shift))
    both = found.found[0] & found.found[1]
    assert both.sum() >= (40 if kind == "face" else 8)           # a face; a head and shoulders
    moved = (found.points[0] - found.points[1])[both] * SIZE       # frame pixels, (n, 2)
    expected = np.array(shift) * SIZE / WINDOW
    # dlib's landmarks move exactly with the content here (they snap to whole pixels). MediaPipe is not exactly
    # translation-equivariant (it crops and resamples a region of interest around the person): over seven
    # shifts of 4-20 px its median landmark moved by the shift within 12% + 1 px; allow 15% + 1 px.
    tolerance = 1.0 if kind == "face" else 0.15 * np.abs(expected) + 1.0
    assert np.all(np.abs(np.median(moved, axis=0) - expected) <= tolerance)
    # AKD between the two frames is then about the mean of |dx| and |dy|
    frames_akd = akd(Landmarks(found.points[:1], found.found[:1]), Landmarks(found.points[1:], found.found[1:]))
    assert frames_akd[0] == pytest.approx(expected.mean(), abs=1.0 if kind == "face" else 3.0)
    if kind == "face":
        assert found.embeddings.shape == (2, 128)
        assert aed(Landmarks(found.points[:1], found.found[:1], found.embeddings[:1]),
                   Landmarks(found.points[1:], found.found[1:], found.embeddings[1:]))[0] < 0.3   # same person


def test_no_face_found_means_every_landmark_missing():
    pytest.importorskip("dlib", reason="needs the metrics extra")
    from modules.evaluation.landmarks import FaceLandmarks

    blank = np.full((1, 256, 256, 3), 128, np.uint8)
    found = FaceLandmarks().detect(blank)
    assert not found.found.any() and np.isnan(found.embeddings).all()


def test_scorer_with_body_landmarks_at_256_px_scores_akd_and_mkr_and_explains_aed(tiny_config):
    pytest.importorskip("mediapipe", reason="needs the metrics extra")
    tiny_config.metrics_params.landmarks = "body"
    scorer = FrameScorer(tiny_config, (SIZE, SIZE))
    assert scorer.metrics == ["l1", "psnr", "ssim", "motion_l1", "akd", "mkr", "jitter", "flicker"]
    assert "re-identification" in scorer.skipped["aed"]
    frames = torch.from_numpy(astronaut_crops((24, 12))).permute(0, 3, 1, 2).float() / 255
    target = scorer.target(frames[:1])
    same = scorer.score(frames[:1], target)
    assert same["akd"][0] == 0 and same["mkr"][0] == 0
    shifted = scorer.score(frames[1:], target)
    assert shifted["akd"][0] > 5 and shifted["l1"][0] > 0.01
