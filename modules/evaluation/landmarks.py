"""Landmark detectors behind the papers' keypoint metrics (AKD, MKR, AED; perturbed-masks paper sec. 4).

Three detectors share one interface, ``detect(frames uint8 (T, H, W, 3)) -> Landmarks``:

    body       MediaPipe Pose (the full model that ships in the mediapipe wheel): 33 body landmarks, each with
               a visibility score; a landmark counts as found when its visibility is at least 0.5. It stands in
               for the OpenPose detections FOMM's evaluation used, so absolute AKD values differ from the
               papers' tables; comparisons between models within this project are like for like.
    face       dlib: the HOG frontal face detector, the 68-point shape predictor and the ResNet face
               descriptor (128-d) from the face-recognition-models package. No face, no landmarks (all 68
               missing) and no embedding.
    synthetic  the project's keypoint regressor, trained on the synthetic renderer's ground truth
               (modules/evaluation/keypoint_regressor.py); always finds all 15 joints.

A frame in which body or face finds no one is looked at once more inside a black border (a quarter of its
longer side on every side, ``detect_retrying_with_border``), the points mapped back to the frame: a subject
that fills the frame or is cut by its edge is then found; points that fall on the border count as not found.
Every user of these detectors (--crop auto, scripts/crop_video.py, scripts/label_keypoints.py, the metrics)
gets the retry.

Body and face need the metrics extra (``pip install -e .[metrics]``). ``make_landmarker`` raises
``MetricsUnavailable`` with the reason when a detector cannot be used; callers record that reason in
metrics.json instead of failing. Coordinates are normalised to the frame: x / width and y / height, with
pixel centre i of an N-pixel axis at (i + 0.5) / N, so frames of different sizes compare directly and AKD
is reported in the pixels of a 256x256 frame, the papers' scale.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Protocol

import numpy as np

EXTRA_HINT = "install the metrics extra: pip install -e .[metrics]"
# The retry's border on every side, as a share of the frame's longer side. A person who fills the frame
# (MediaPipe Pose: 0 of 16 frames of a tight clip) is found with such a border (15 of 16): the pose detector
# was trained on people with some room around them, and a face cut by the frame's edge defeats dlib's HOG.
BORDER = 0.25


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send file descriptor 2 to /dev/null: MediaPipe's C++ and TFLite print start-up lines there that no Python
    setting silences, and they would interleave with the progress bar."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class MetricsUnavailable(Exception):
    """A detector cannot run here; the message is the reason metrics.json records."""


@dataclass
class Landmarks:
    points: np.ndarray                       # (T, N, 2) float64, x / width and y / height, in [0, 1] inside
                                             # the frame (a point beyond its edge may lie outside)
    found: np.ndarray                        # (T, N) bool
    embeddings: Optional[np.ndarray] = None  # (T, D) identity embeddings, NaN rows where none was found

    def __len__(self) -> int:
        return len(self.points)


class Landmarker(Protocol):
    name: str
    num_points: int
    min_size: int                            # frames with a smaller side are not reliable

    def detect(self, frames: np.ndarray) -> Landmarks: ...


class Detection(NamedTuple):
    """One frame's detection: points normalised to the frame it was run on, and what ``Landmarks`` holds."""
    points: np.ndarray                       # (N, 2)
    found: np.ndarray                        # (N,) bool
    embedding: Optional[np.ndarray] = None   # (D,) or None


def with_border(frame: np.ndarray, border: float = BORDER) -> tuple[np.ndarray, int]:
    """``frame`` (H, W, 3) inside a black border of ``border`` of its longer side on every side, and that
    border's width in pixels. Black, not the edge colour: MediaPipe's pose detector letterboxes its own input
    with black (its graph's border_mode BORDER_ZERO), and repeated edge pixels would draw streaks that carry on
    the limbs, hair or clothes the edge cuts."""
    pad = max(1, int(round(border * max(frame.shape[:2]))))
    return np.pad(frame, ((pad, pad), (pad, pad), (0, 0))), pad


def detect_retrying_with_border(detect: Callable[[np.ndarray], Optional[Detection]], frame: np.ndarray,
                                retry: Optional[Callable[[np.ndarray], Optional[Detection]]] = None
                                ) -> Optional[Detection]:
    """``detect(frame)``; where it finds nothing, ``retry`` (default ``detect``) once on the frame inside a
    border (``with_border``), with the points mapped back to ``frame``'s normalised coordinates. Mapped points
    may lie outside [0, 1]: those lie on the border, which the frame does not show, so they count as not
    found (as a detector marks a point beyond the frame's edge)."""
    detection = detect(frame)
    if detection is not None:
        return detection
    padded, pad = with_border(frame)
    detection = (retry or detect)(padded)
    if detection is None:
        return None
    height, width = frame.shape[:2]
    # x / width of the padded frame -> pixels of the padded frame -> pixels of the frame -> x / width.
    points = (detection.points * (width + 2 * pad, height + 2 * pad) - pad) / (width, height)
    inside = np.all((points >= 0) & (points <= 1), axis=1)
    return Detection(points, detection.found & inside, detection.embedding)


class BodyLandmarks:
    """MediaPipe Pose on each frame independently (no tracking: a detection must not borrow from the frames
    before it, or a missed person in a generated frame would be hidden)."""

    name = "body"
    num_points = 33
    min_size = 128
    min_visibility = 0.5

    def __init__(self) -> None:
        if importlib.util.find_spec("mediapipe") is None:
            raise MetricsUnavailable(f"body landmarks need mediapipe; {EXTRA_HINT}")
        with _quiet_native_stderr():
            from mediapipe.python.solutions import pose

            # model_complexity 1 is the model bundled in the wheel; 2 ("heavy") would need a download.
            self._pose = pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                   min_detection_confidence=0.5)
            self._pose.process(np.zeros((128, 128, 3), np.uint8))      # the first call prints more start-up lines

    def detect(self, frames: np.ndarray) -> Landmarks:
        count = len(frames)
        points = np.zeros((count, self.num_points, 2))
        found = np.zeros((count, self.num_points), bool)
        for t, frame in enumerate(frames):
            detection = detect_retrying_with_border(self._detect_one, np.ascontiguousarray(frame))
            if detection is not None:
                points[t], found[t] = detection.points, detection.found
        return Landmarks(points, found)

    def _detect_one(self, frame: np.ndarray) -> Optional[Detection]:
        with warnings.catch_warnings():
            # mediapipe 0.10.14 calls a protobuf API that warns it is deprecated, once per call
            warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
            result = self._pose.process(frame)
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        # MediaPipe's normalised coordinates put the image's left edge at 0 and right edge at 1, the
        # convention used here.
        return Detection(np.array([(m.x, m.y) for m in marks], float),
                         np.array([m.visibility >= self.min_visibility for m in marks], bool))


class FaceLandmarks:
    """dlib's 68 face landmarks and 128-d identity descriptor of the largest face in each frame."""

    name = "face"
    num_points = 68
    min_size = 128

    def __init__(self) -> None:
        if importlib.util.find_spec("dlib") is None:
            raise MetricsUnavailable(f"face landmarks need dlib; {EXTRA_HINT}")
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None:
            raise MetricsUnavailable(f"face landmarks need the face-recognition-models weights; {EXTRA_HINT}")
        import dlib

        # Found without importing the package: its __init__ needs pkg_resources, gone from current setuptools.
        models = os.path.join(list(spec.submodule_search_locations)[0], "models")
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
        self._descriptor = dlib.face_recognition_model_v1(
            os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))
        self._rectangle = dlib.rectangle

    def detect(self, frames: np.ndarray) -> Landmarks:
        count = len(frames)
        points = np.zeros((count, self.num_points, 2))
        found = np.zeros((count, self.num_points), bool)
        embeddings = np.full((count, 128), np.nan)
        for t, frame in enumerate(frames):
            # The HOG detector's smallest face is about 80 px: look again in the frame upsampled twice. The
            # bordered retry is for a face too large for the frame or cut by its edge, which is never small:
            # upsampling that larger frame too would cost 9 times the frame's pixels for nothing.
            detection = detect_retrying_with_border(lambda image: self._detect_one(image, (0, 1)),
                                                    np.ascontiguousarray(frame),
                                                    lambda image: self._detect_one(image, (0,)))
            if detection is not None:
                points[t], found[t], embeddings[t] = detection
        return Landmarks(points, found, embeddings)

    def _detect_one(self, frame: np.ndarray, upsamplings: tuple[int, ...]) -> Optional[Detection]:
        """The largest face's landmarks and descriptor, trying each upsampling in turn until a face is found."""
        faces = []
        for upsampling in upsamplings:
            faces = self._detector(frame, upsampling)
            if len(faces) > 0:
                break
        if len(faces) == 0:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        shape = self._shape(frame, face)
        xy = np.array([(shape.part(i).x, shape.part(i).y) for i in range(self.num_points)], float)
        height, width = frame.shape[:2]
        return Detection((xy + 0.5) / (width, height), np.ones(self.num_points, bool),
                         np.array(self._descriptor.compute_face_descriptor(frame, shape)))


class SyntheticLandmarks:
    """The keypoint regressor trained on the synthetic dataset's ground-truth joints."""

    name = "synthetic"
    min_size = 1                             # trained at the dataset's own size

    def __init__(self, path: str, device: str = "cpu") -> None:
        from modules.core.errors import UserError
        from modules.evaluation.keypoint_regressor import load_regressor

        if not os.path.isfile(path):
            raise MetricsUnavailable(f"no keypoint regressor at {path}; train one with "
                                     f"python scripts/train_keypoint_regressor.py --data <dataset root>")
        try:
            self._model, checkpoint = load_regressor(path, device)
        except UserError as error:
            raise MetricsUnavailable(str(error)) from None
        self.num_points = int(checkpoint["num_keypoints"])
        self.size = int(checkpoint["size"])                # the frame side it was trained at
        self.info = checkpoint.get("info", {})
        self._device = device

    def detect(self, frames: np.ndarray) -> Landmarks:
        from modules.evaluation.keypoint_regressor import predict

        points = predict(self._model, frames, device=self._device).astype(np.float64)
        return Landmarks(points, np.ones(points.shape[:2], bool))

    def detect_with_confidence(self, frames: np.ndarray) -> tuple[Landmarks, np.ndarray]:
        """``detect`` and each frame's confidence (modules/keypoint_regressor.predict_with_confidence)."""
        from modules.evaluation.keypoint_regressor import predict_with_confidence

        points, confidence = predict_with_confidence(self._model.cpu(), frames)
        return Landmarks(points.astype(np.float64), np.ones(points.shape[:2], bool)), confidence


def make_landmarker(config, frame_size: tuple[int, int]) -> Landmarker:
    """The detector a config's ``metrics_params`` asks for, or ``MetricsUnavailable`` with the reason."""
    params = config.metrics_params
    if params.landmarks == "none":
        raise MetricsUnavailable("metrics_params.landmarks is none")
    if params.landmarks == "synthetic":
        path = params.keypoint_regressor or os.path.join(config.dataset_params.root_dir, "keypoint-regressor.pth")
        return SyntheticLandmarks(path)
    if min(frame_size) < params.min_landmark_size:
        raise MetricsUnavailable(
            f"{params.landmarks} landmarks are unreliable on {frame_size[0]}x{frame_size[1]} frames (a pose "
            f"estimator found the person in 9 of 40 real 64 px frames); they need a side of at least "
            f"{params.min_landmark_size} px (metrics_params.min_landmark_size)")
    return BodyLandmarks() if params.landmarks == "body" else FaceLandmarks()


def normalised_pose(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2) landmarks -> the same, centred and divided by sqrt(convex hull area), for comparing the pose of
    two people of different size and position (what --find_best_frame ranks by)."""
    import torch

    from modules.nets.motion import convex_hull_area

    centred = landmarks - landmarks.mean(axis=0)
    area = float(convex_hull_area(torch.from_numpy(np.asarray(landmarks, np.float64))[None])[0])
    return centred / max(np.sqrt(area), 1e-8)
