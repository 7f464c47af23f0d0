"""scripts/demo_faces.py's summary figures on hand-made dlib-style landmarks and descriptors (no model, no dlib)."""
from __future__ import annotations

import numpy as np
import pytest

from modules.evaluation.landmarks import Landmarks
from scripts.demo_faces import face_measures, following, identity_distances


def neutral_face() -> np.ndarray:
    """(68, 2) points of a frontal, level face with a closed mouth, in [0, 1] frame coordinates."""
    points = np.full((68, 2), 0.5)
    points[0] = (0.2, 0.45)                      # jaw ends
    points[16] = (0.8, 0.45)
    points[8] = (0.5, 0.9)                       # chin
    points[27] = (0.5, 0.4)                      # nose bridge top: nose-to-chin 0.5
    points[30] = (0.5, 0.6)                      # nose tip, midway between the jaw ends
    points[36] = (0.3, 0.4)                      # outer eye corners, level
    points[45] = (0.7, 0.4)
    points[62] = (0.5, 0.75)                     # inner lips, touching
    points[66] = (0.5, 0.75)
    return points


def faces(*changes) -> np.ndarray:
    """(T, 68, 2): the neutral face changed by each function of ``changes`` (one frame each)."""
    frames = []
    for change in changes:
        points = neutral_face()
        change(points)
        frames.append(points)
    return np.stack(frames)


def open_mouth(gap: float):
    def change(points):
        points[62, 1] -= gap / 2
        points[66, 1] += gap / 2
    return change


def turn(offset: float):
    def change(points):
        points[30, 0] += offset
    return change


def tilt(angle: float):
    def change(points):
        centre = (points[36] + points[45]) / 2
        half = np.linalg.norm(points[45] - points[36]) / 2
        direction = np.array([np.cos(angle), np.sin(angle)])
        points[36], points[45] = centre - half * direction, centre + half * direction
    return change


def test_neutral_face_measures_zero():
    np.testing.assert_allclose(face_measures(faces(lambda p: None)), [[0.0, 0.0, 0.0]], atol=1e-12)


def test_mouth_opening_grows_as_the_inner_lips_part():
    measures = face_measures(faces(open_mouth(0.0), open_mouth(0.05), open_mouth(0.1), open_mouth(0.2)))
    mouth = measures[:, 0]
    assert np.all(np.diff(mouth) > 0)
    assert mouth[2] == pytest.approx(0.1 / 0.5)              # the gap over the nose-to-chin length
    np.testing.assert_allclose(measures[:, 1:], 0.0, atol=1e-12)   # turn and tilt untouched


def test_mouth_opening_does_not_depend_on_the_face_size():
    small = faces(open_mouth(0.1))
    big = (small - 0.5) * 1.5 + 0.5
    assert face_measures(big)[0, 0] == pytest.approx(face_measures(small)[0, 0])


def test_head_turn_sign_follows_the_nose_tip_against_the_jaw_ends():
    measures = face_measures(faces(turn(-0.06), turn(0.0), turn(0.06), turn(0.12)))[:, 1]
    assert measures[0] < 0 and measures[1] == pytest.approx(0) and 0 < measures[2] < measures[3]
    assert measures[2] == pytest.approx(0.06 / 0.6)           # offset over the jaw's width
    assert measures[0] == pytest.approx(-measures[2])
    # moving the whole face sideways is no turn
    shifted = faces(turn(0.06))
    shifted[..., 0] += 0.1
    assert face_measures(shifted)[0, 1] == pytest.approx(measures[2])


def test_head_tilt_follows_the_eye_corners():
    measures = face_measures(faces(tilt(-0.2), tilt(0.0), tilt(0.1), tilt(0.3)))
    np.testing.assert_allclose(measures[:, 2], [-0.2, 0.0, 0.1, 0.3], atol=1e-12)
    np.testing.assert_allclose(measures[:, 0:2], 0.0, atol=1e-12)


def _landmarks(points: np.ndarray, found: np.ndarray | None = None, embeddings=None) -> Landmarks:
    if found is None:
        found = np.ones(points.shape[:2], bool)
    return Landmarks(points, found, embeddings)


def _moving_faces(scale: float) -> np.ndarray:
    """Six frames whose mouth, turn and tilt all vary over time, by ``scale`` times a fixed pattern."""
    pattern = [0.1, 0.3, 0.2, 0.5, 0.4, 0.0]
    frames = []
    for value in pattern:
        points = neutral_face()
        for change in (open_mouth(scale * value * 0.2), turn(scale * value * 0.1), tilt(scale * value * 0.4)):
            change(points)
        frames.append(points)
    return np.stack(frames)


def test_following_gives_correlation_one_for_proportional_measures():
    driving, result = _landmarks(_moving_faces(1.0)), _landmarks(_moving_faces(0.5))
    follow = following(driving, result)
    assert set(follow) == {"mouth_opening", "head_turn", "head_tilt"}
    for name, value in follow.items():
        assert value == pytest.approx(1.0, abs=1e-9), name


def test_following_is_negative_for_opposite_motion_and_none_for_a_still_measure():
    driving = _landmarks(_moving_faces(1.0))
    opposite = _moving_faces(1.0)
    opposite[:, 30, 0] = 1.0 - opposite[:, 30, 0]             # the nose tip mirrored about the face's middle
    opposite[:, 62:67] = neutral_face()[62:67]                  # a closed mouth throughout
    follow = following(driving, _landmarks(opposite))
    assert follow["head_turn"] == pytest.approx(-1.0, abs=1e-9)
    assert follow["mouth_opening"] is None
    assert follow["head_tilt"] == pytest.approx(1.0, abs=1e-9)


def test_following_uses_frames_with_a_face_in_both_and_needs_three():
    points = _moving_faces(1.0)
    found = np.ones(points.shape[:2], bool)
    found[[0, 2], 5] = False                                     # one point missing: the frame does not count
    garbage = points.copy()
    garbage[[0, 2]] = np.random.default_rng(0).random((2, 68, 2))  # what the result shows where the driver has none
    follow = following(_landmarks(points, found), _landmarks(garbage))
    assert all(value == pytest.approx(1.0, abs=1e-9) for value in follow.values())  # 4 frames left, in step

    few = np.ones(points.shape[:2], bool)
    few[2:] = False                                              # 2 shared frames only
    assert following(_landmarks(points, few), _landmarks(points)) == \
        {"mouth_opening": None, "head_turn": None, "head_tilt": None}
    assert following(_landmarks(points), _landmarks(points, np.zeros_like(few))) == \
        {"mouth_opening": None, "head_turn": None, "head_tilt": None}


def _with_embeddings(rows) -> Landmarks:
    embeddings = np.array(rows, float)
    count = len(embeddings)
    return _landmarks(np.zeros((count, 68, 2)), embeddings=embeddings)


def test_identity_distances_average_the_frames_with_a_face():
    nan = np.nan
    source = _with_embeddings([[0.0, 0.0, 0.0]])
    driving = _with_embeddings([[3.0, 0.0, 0.0], [nan, nan, nan], [5.0, 0.0, 0.0]])   # mean (4, 0, 0)
    result = _with_embeddings([[0.0, 1.0, 0.0], [nan, nan, nan], [0.0, 1.0, 2.0], [0.0, 1.0, -2.0]])  # mean (0, 1, 0)
    distances = identity_distances(source, driving, result)
    assert distances == {"result_to_photo": pytest.approx(1.0), "result_to_driver": pytest.approx(17 ** 0.5),
                         "driver_to_photo": pytest.approx(4.0)}


def test_identity_distances_are_none_without_any_face():
    nan = np.nan
    source = _with_embeddings([[1.0, 2.0]])
    faceless = _with_embeddings([[nan, nan], [nan, nan]])
    distances = identity_distances(source, faceless, _with_embeddings([[1.0, 2.0]]))
    assert distances == {"result_to_photo": 0.0, "result_to_driver": None, "driver_to_photo": None}
    # one NaN value is enough to drop a row
    partial = _with_embeddings([[nan, 9.0], [4.0, 6.0]])
    assert identity_distances(source, partial, partial)["driver_to_photo"] == pytest.approx(5.0)


# ------------------------------------------------------------------------------------- the whole demo, shipped

FACE_MODEL = "models/faces-heatmap.pth.tar"


def test_the_face_demo_animates_the_shipped_photo_and_writes_its_summary(tmp_path, capsys):
    """`make demo`'s second part on the committed inputs, with the driving clip cut to 12 frames: the files,
    a result the size of the photo, the summary's figures in metrics.json and on the terminal."""
    import json
    import os

    pytest.importorskip("dlib")
    from modules.data.video_io import VideoWriter, open_video
    from scripts.demo_faces import DEFAULT_PHOTO, DEFAULT_VIDEO, FILES, main

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clip = str(tmp_path / "clip.mp4")
    with VideoWriter(clip, fps=30) as writer:
        writer.write(open_video(os.path.join(repo, DEFAULT_VIDEO)).read(list(range(0, 96, 8))))
    out = tmp_path / "out"
    assert main(["--model", os.path.join(repo, FACE_MODEL), "--photo", os.path.join(repo, DEFAULT_PHOTO),
                 "--video", clip, "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == sorted(FILES)
    result = open_video(str(out / "result.mp4"))
    height, width = result.read([0]).shape[1:3]
    assert result.num_frames == 12 and height == 500 and width in (375, 376)   # the photo (H.264 wants even sides)
    summary = json.load(open(out / "metrics.json"))
    assert summary["frames"] == 12 and summary["faces_found"]["driving"] == 1.0
    assert set(summary["following"]) == {"mouth_opening", "head_turn", "head_tilt"}
    identity = summary["identity"]
    assert identity["driver_to_photo"] > 0.6                 # two people, by dlib's rule
    printed = capsys.readouterr().out
    assert "how the result follows the driver" in printed and f"{identity['driver_to_photo']:.2f}" in printed
    capsys.readouterr()
    assert main(["--model", os.path.join(repo, FACE_MODEL), "--photo", str(tmp_path / "none.jpg"),
                 "--out", str(tmp_path / "other")]) == 2
    assert "--photo" in capsys.readouterr().err and not (tmp_path / "other").exists()
