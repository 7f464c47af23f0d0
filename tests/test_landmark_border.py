"""The bordered retry of the landmark detectors (modules/evaluation/landmarks.py): a frame in which MediaPipe Pose or dlib
finds no subject is looked at again inside a black border, and the points come back in the frame's own
normalised coordinates. Fake detectors that only see a subject when the frame has a border check the mapping
exactly; dlib, where installed, checks it on a real face cut by the frame's edge."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from modules.evaluation.landmarks import BodyLandmarks, FaceLandmarks, with_border

RED_MARK = 255                                 # a landmark's pixel: red 255, green its index


def marked_frame(height: int, width: int, positions: list[tuple[int, int]], border: int = 0) -> np.ndarray:
    """A grey frame with landmark i drawn as one pixel at positions[i] (x, y), inside ``border`` black pixels."""
    frame = np.full((height, width, 3), 100, np.uint8)
    for index, (x, y) in enumerate(positions):
        frame[y, x] = (RED_MARK, index, 0)
    return np.pad(frame, ((border, border), (border, border), (0, 0)))


def marks_in(frame: np.ndarray, count: int) -> np.ndarray:
    """(count, 2) pixel (column, row) of each landmark pixel drawn by ``marked_frame``."""
    found = []
    for index in range(count):
        rows, columns = np.nonzero((frame[..., 0] == RED_MARK) & (frame[..., 1] == index))
        found.append((columns[0], rows[0]))
    return np.array(found, float)


def has_border(frame: np.ndarray) -> bool:
    return not frame[0].any() and not frame[:, 0].any()


def true_points(positions: list[tuple[int, int]], height: int, width: int) -> np.ndarray:
    """The project's normalised coordinates of pixel centres: (i + 0.5) / N."""
    return (np.array(positions, float) + 0.5) / (width, height)


class FakePose:
    """MediaPipe Pose's ``process`` that finds the person only in a frame with a black border. Landmark 0 has a
    low visibility; landmark 32 is placed on the border's top-left corner, which the original frame lacks."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def process(self, frame: np.ndarray) -> SimpleNamespace:
        self.shapes.append(frame.shape)
        if not has_border(frame):
            return SimpleNamespace(pose_landmarks=None)
        height, width = frame.shape[:2]
        xy = (marks_in(frame, 32) + 0.5) / (width, height)
        marks = [SimpleNamespace(x=x, y=y, visibility=0.2 if i == 0 else 0.9) for i, (x, y) in enumerate(xy)]
        marks.append(SimpleNamespace(x=0.5 / width, y=0.5 / height, visibility=0.9))
        return SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=marks))


def fake_body() -> tuple[BodyLandmarks, FakePose]:
    body = BodyLandmarks.__new__(BodyLandmarks)              # no MediaPipe needed: only _pose is used
    body._pose = FakePose()
    return body, body._pose


def spread_positions(count: int, height: int, width: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    cells = rng.choice(height * width, size=count, replace=False)
    return [(int(c % width), int(c // width)) for c in cells]


def test_a_pose_found_only_with_a_border_comes_back_in_the_frames_own_coordinates():
    height, width = 90, 60                                    # not square: each axis maps with its own scale
    positions = spread_positions(32, height, width)
    body, pose = fake_body()
    marks = body.detect(marked_frame(height, width, positions)[None])
    pad = round(0.25 * 90)                                    # a quarter of the longer side on every side
    assert pose.shapes == [(90, 60, 3), (90 + 2 * pad, 60 + 2 * pad, 3)]   # one retry, with the border
    np.testing.assert_allclose(marks.points[0, :32], true_points(positions, height, width), atol=1e-12)
    assert not marks.found[0, 0] and marks.found[0, 1:32].all()            # visibility passes through
    # the border's corner pixel lies outside the frame: there, and not found, as beyond the frame's edge
    np.testing.assert_allclose(marks.points[0, 32], ((0.5 - pad) / width, (0.5 - pad) / height))
    assert not marks.found[0, 32]


def test_a_frame_that_gives_a_pose_is_not_retried_and_one_that_never_does_stays_empty():
    height, width = 64, 64
    positions = spread_positions(32, height, width, seed=1)
    body, pose = fake_body()
    framed = marked_frame(height, width, positions, border=8)             # its own border: found at once
    marks = body.detect(framed[None])
    assert pose.shapes == [framed.shape]
    np.testing.assert_allclose(marks.points[0, :32], true_points([(x + 8, y + 8) for x, y in positions], 80, 80))

    class Blind(FakePose):
        def process(self, frame):
            self.shapes.append(frame.shape)
            return SimpleNamespace(pose_landmarks=None)

    body._pose = Blind()
    marks = body.detect(np.stack([framed, framed]))
    assert len(body._pose.shapes) == 4 and not marks.found.any()          # each frame tried twice, no more


class FakeDlib:
    """dlib's face detector, shape predictor and descriptor, finding the face only in a bordered frame."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def detector(self, frame: np.ndarray, upsampling: int) -> list:
        self.calls.append((frame.shape, upsampling))
        return [SimpleNamespace(width=lambda: 10, height=lambda: 10)] if has_border(frame) else []

    def shape(self, frame: np.ndarray, face) -> SimpleNamespace:
        xy = marks_in(frame, 68).astype(int)
        return SimpleNamespace(part=lambda i: SimpleNamespace(x=xy[i, 0], y=xy[i, 1]))

    def compute_face_descriptor(self, frame: np.ndarray, shape) -> list[float]:
        return [float(frame.shape[0])] * 128                   # records which frame it was computed on


def test_a_face_found_only_with_a_border_comes_back_in_the_frames_own_coordinates():
    height, width = 50, 80
    positions = spread_positions(68, height, width, seed=2)
    face = FaceLandmarks.__new__(FaceLandmarks)               # no dlib needed: only these three are used
    fake = FakeDlib()
    face._detector, face._shape, face._descriptor = fake.detector, fake.shape, fake
    marks = face.detect(marked_frame(height, width, positions)[None])
    padded = (50 + 2 * 20, 80 + 2 * 20, 3)                    # 20 = a quarter of the longer side
    # upsampled twice on the frame; on the bordered frame only once as it is (a face cut by the edge is large)
    assert fake.calls == [((50, 80, 3), 0), ((50, 80, 3), 1), (padded, 0)]
    np.testing.assert_allclose(marks.points[0], true_points(positions, height, width), atol=1e-12)
    assert marks.found.all() and (marks.embeddings[0] == padded[0]).all()


def test_dlib_finds_a_real_face_cut_by_the_frames_edge_where_the_photo_shows_it():
    pytest.importorskip("dlib", reason="needs the metrics extra")
    from skimage.data import astronaut

    photo = astronaut()
    tight = np.ascontiguousarray(photo[100:200, 180:330])    # the face from mid-forehead down, cut at the top
    wide = np.ascontiguousarray(photo[40:260, 120:390])      # the same face with room around it
    detector = FaceLandmarks()
    cut, whole = detector.detect(tight[None]), detector.detect(wide[None])
    assert whole.found.all() and 40 <= cut.found.sum() < 68  # the eyebrows above the frame are not found
    in_tight = cut.points[0] * (150, 100)
    assert np.array_equal(cut.found[0], ((in_tight >= 0) & (in_tight <= (150, 100))).all(axis=1))
    # the same landmarks as dlib gives with the photo's own context, in the tight frame's pixels
    from_wide = whole.points[0] * (270, 220) - (60, 60)
    error = np.abs(in_tight - from_wide)
    assert np.median(error) <= 2 and error.max() <= 6, error.max(axis=0)
    assert not np.isnan(cut.embeddings).any()


def test_with_border_pads_black_by_a_quarter_of_the_longer_side():
    frame = np.full((40, 20, 3), 7, np.uint8)
    padded, pad = with_border(frame)
    assert pad == 10 and padded.shape == (60, 40, 3)
    assert (padded[10:50, 10:30] == 7).all() and padded.sum() == frame.sum()
