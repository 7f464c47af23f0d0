"""Automatic crop and paste-back: any photo and any video in, a result at the photo's own size out.

Every model of this field is trained on tight square crops: a face (VoxCeleb) or a whole body (Tai-Chi-HD)
in the middle of the frame, at a fixed scale. ``--crop auto`` finds the subject with the config's landmark
detector (``metrics_params.landmarks``: MediaPipe Pose for bodies, dlib's 68 face landmarks, the keypoint
regressor for the synthetic figures; modules/evaluation/landmarks.py), takes the landmarks' bounding box and enlarges
it the way the training crops were made (``INCREASE``), as one square box per image and one per video; the
model animates the crop, and the result is resized back and blended into the photo (``paste_back``).

One box per video, as FOMM's preprocessing crops a clip: the union of the subject's boxes over the video,
each frame's box first steadied by a running median so that one bad detection cannot stretch the union.
A fixed box cannot jitter; a box that followed the subject would cancel the motion the driver is meant to
give (a dancer crossing the stage would stand still).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from modules.core.errors import UserError
from modules.core.files import REPOSITORY
from modules.data.video_io import resize_frame

# How far a training crop reaches beyond the subject's landmark box, on each side, as a fraction of that box's
# longer side: (for one image, for the union over a video).
# face, body: FOMM's crop-video.py enlarges the union of the clip's detection boxes by 10% on each side
#   (its --increase 0.1), for VoxCeleb and Tai-Chi-HD alike. Landmarks stop short of the top of the head, so
#   the landmark box is first raised to it: a face's (dlib: eyebrows to chin) by half its height
#   (FACE_TOP), a body's (MediaPipe: eyes to feet) to 2.2 eye-to-mouth distances above the eyes (HEAD_TOP).
# synthetic: measured on the synthetic dataset's ground-truth joints (80 clips of 64 px): one frame's joints
#   span 42.4 px of the 64 (so 64 = (1 + 2 * 0.25) * 42.4), a clip's union 45.3 px (0.2), centred in the frame.
INCREASE = {"face": (0.1, 0.1), "body": (0.1, 0.1), "synthetic": (0.25, 0.2)}
FACE_TOP = 0.5                  # a face box grows upwards by this share of its height
HEAD_TOP = 2.2                  # a body box reaches this many eye-to-mouth distances above the eyes
EYES, MOUTH = (2, 5), (9, 10)   # MediaPipe Pose's eye and mouth-corner landmarks
FILLS_FRAME = 0.9               # a box this close to the whole frame (its long side): already a crop
FEATHER_PX = 10                 # paste-back blends over this many pixels inside the box's edge
STEADY_WINDOW = 5               # frames of the running median that steadies the per-frame boxes
SHIPPED_REGRESSOR = os.path.join(REPOSITORY, "models",
                                 "synthetic-keypoint-regressor.pth")
# The regressor's confidence (mean heatmap peak) in a figure framed as in training: 0.19-0.33 on the synthetic
# figures tried, at most 0.15 on noise, smooth backdrops and a real photograph.
MIN_CONFIDENCE = 0.17
VIDEO_SEARCHES = 4              # synthetic: full window searches per video; between them the box is tracked
VIDEO_FRAMES = 64               # the driving video's box is measured on at most this many frames, evenly spread

Bounds = tuple[float, float, float, float]      # left, top, right, bottom in pixels (right and bottom exclusive)


@dataclasses.dataclass(frozen=True)
class Box:
    """A square region of a frame: ``x`` the column and ``y`` the row of its top-left pixel, ``side`` pixels."""
    x: int
    y: int
    side: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.side},{self.side}"

    def inside(self, shape: Sequence[int]) -> bool:
        return self.side > 0 and self.x >= 0 and self.y >= 0 and self.x + self.side <= shape[1] \
            and self.y + self.side <= shape[0]


def parse_box(text: str, what: str) -> Box:
    """``x,y,w,h`` (pixels, w = h) -> Box; a one-line UserError naming ``what`` (the flag) otherwise."""
    parts = text.split(",")
    try:
        x, y, w, h = (int(part) for part in parts)
    except ValueError:
        raise UserError(f"{what} {text!r}: expected auto, none or x,y,w,h in whole pixels (x the column and y "
                        f"the row of the top-left corner, w = h)") from None
    if w != h or w <= 0 or x < 0 or y < 0:
        raise UserError(f"{what} {text!r}: the box must be square (w = h > 0) with x, y >= 0")
    return Box(x, y, w)


def check_box(box: Box, shape: Sequence[int], what: str, file: str) -> Box:
    if not box.inside(shape):
        raise UserError(f"{what} {box}: the box leaves {file} ({shape[1]}x{shape[0]} pixels, width x height)")
    return box


def landmark_bounds(points: np.ndarray, found: np.ndarray, shape: Sequence[int], kind: str) -> Optional[Bounds]:
    """The pixel box of one frame's found landmarks (normalised (N, 2), modules/evaluation/landmarks.py), or None."""
    if found.sum() < 3:
        return None
    height, width = shape[:2]
    xs, ys = points[found, 0] * width, points[found, 1] * height
    left, top, right, bottom = xs.min(), ys.min(), xs.max(), ys.max()
    if kind == "face":
        top -= FACE_TOP * (bottom - top)
    if kind == "body" and len(found) > max(EYES + MOUTH) and found[list(EYES + MOUTH)].all():
        eyes, mouth = ys_of(points, EYES) * height, ys_of(points, MOUTH) * height
        top = min(top, eyes - HEAD_TOP * max(mouth - eyes, 0.0))
    return float(left), float(top), float(right), float(bottom)


def ys_of(points: np.ndarray, indices: Sequence[int]) -> float:
    return float(points[list(indices), 1].mean())


def square_box(bounds: Bounds, increase: float, shape: Sequence[int]) -> Box:
    """The square around ``bounds`` with ``increase`` of its longer side added on each side, moved (never
    shrunk, unless the frame is smaller) to lie inside a frame of ``shape``."""
    height, width = shape[:2]
    left, top, right, bottom = bounds
    side = (1 + 2 * increase) * max(right - left, bottom - top, 1.0)
    side = int(round(min(side, height, width)))
    x = int(round((left + right) / 2 - side / 2))
    y = int(round((top + bottom) / 2 - side / 2))
    return Box(min(max(x, 0), width - side), min(max(y, 0), height - side), side)


def fills_frame(box: Box, shape: Sequence[int]) -> bool:
    """Whether the frame is already such a crop (the model then sees the whole frame, as without cropping):
    a (nearly) square frame that the box (nearly) covers."""
    # Measured against the long side: the box can be no longer than the short side, so only a frame within 10%
    # of square can fill; in any other the found box is used. Against the short side, a 256x512 portrait's box
    # of head and shoulders "filled" it, and --fit then took the portrait's middle square (cutting the head off).
    return box.side >= FILLS_FRAME * max(shape[:2])


def union(boxes: Sequence[Bounds]) -> Bounds:
    array = np.asarray(boxes)
    return float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max())


def steady_union(boxes: Sequence[Bounds], window: int = STEADY_WINDOW) -> Bounds:
    """The union of per-frame boxes after a running median over ``window`` frames: a detection that is wrong
    in fewer than half of any ``window`` frames in a row cannot stretch the union."""
    array = np.asarray(boxes, dtype=np.float64)
    half = window // 2
    steady = [np.median(array[max(0, i - half):i + half + 1], axis=0) for i in range(len(array))]
    return union(steady)


# ----------------------------------------------------------------------------------------------------------
# Finding the subject

class SyntheticFinder:
    """The synthetic figures' finder: the keypoint regressor, trained on tight 64-px frames, read through
    square windows of several sizes over the frame. A window that frames a figure the way the training data
    do gives sharp heatmaps (the regressor's confidence) and joints that imply that same window back (their
    box enlarged by ``INCREASE``); the window scoring best on both (confidence x overlap with the box it
    implies) wins, and two rounds of re-reading the box it implies refine it."""

    scales = (1.0, 0.75, 0.5, 0.375, 0.25)       # window side / the frame's short side

    def __init__(self, landmarker):
        self.landmarker = landmarker

    def _read(self, frame: np.ndarray, windows: list[Box]) -> tuple[list[Box], np.ndarray]:
        """Each window's implied box and the regressor's confidence in it."""
        size = self.landmarker.size
        crops = np.stack([resize_frame(np.ascontiguousarray(frame[w.y:w.y + w.side, w.x:w.x + w.side]),
                                       (size, size)) for w in windows])
        found, confidence = self.landmarker.detect_with_confidence(crops)   # points in [0, 1] of each window
        implied = []
        for window, joints in zip(windows, found.points):
            xs, ys = window.x + joints[:, 0] * window.side, window.y + joints[:, 1] * window.side
            implied.append(square_box((xs.min(), ys.min(), xs.max(), ys.max()), INCREASE["synthetic"][0],
                                      frame.shape))
        return implied, confidence

    def box(self, frame: np.ndarray, start: Optional[Box] = None) -> Optional[Box]:
        """The figure's crop box in ``frame``, or None if no window holds one (the regressor's confidence in
        the box stays below MIN_CONFIDENCE); from ``start`` (the previous frame's box) only refined."""
        if start is not None:
            return self._refined(frame, start)
        height, width = frame.shape[:2]
        windows = []
        for scale in self.scales:
            side = max(8, int(round(scale * min(height, width))))
            stride = max(1, side // 4)
            windows += [Box(x, y, side) for y in range(0, height - side + 1, stride)
                        for x in range(0, width - side + 1, stride)]
        if not windows:                      # a frame smaller than the smallest window (a 1x1 photo) holds no figure
            return None
        implied, confidence = [], []
        for start_index in range(0, len(windows), 256):                    # bounded memory on large photos
            boxes, sure = self._read(frame, windows[start_index:start_index + 256])
            implied += boxes
            confidence += sure.tolist()
        best = max(range(len(windows)), key=lambda i: confidence[i] * overlap(windows[i], implied[i]))
        return self._refined(frame, implied[best])

    def _refined(self, frame: np.ndarray, box: Box) -> Optional[Box]:
        for _ in range(2):
            (box,), sure = self._read(frame, [box])
        return box if sure[0] >= MIN_CONFIDENCE else None


def overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a.x + a.side, b.x + b.side) - max(a.x, b.x))
    height = max(0, min(a.y + a.side, b.y + b.side) - max(a.y, b.y))
    inter = width * height
    return inter / (a.side ** 2 + b.side ** 2 - inter)


class SubjectFinder:
    """The subject's square crop box in an image or over a video, for one landmark kind."""

    def __init__(self, kind: str, landmarker):
        self.kind, self.landmarker = kind, landmarker
        self.synthetic = SyntheticFinder(landmarker) if kind == "synthetic" else None
        self._last: Optional[Box] = None         # synthetic: the last frame's box, where the next search starts
        self._searches = 0                       # synthetic: full window searches left for this video

    def frame_bounds(self, frames: np.ndarray) -> list[Optional[Bounds]]:
        """Per frame (T, H, W, 3), the subject's landmark box in pixels, or None where none was found."""
        if self.synthetic is not None:
            bounds = []
            for frame in frames:
                tracked = None if self._last is None else self.synthetic.box(frame, self._last)
                if tracked is None and self._searches > 0:        # lost, or not found yet: search again
                    self._searches -= 1
                    tracked = self.synthetic.box(frame)
                self._last = tracked
                bounds.append(None if self._last is None else _box_bounds(self._last, INCREASE["synthetic"][0]))
            return bounds
        found = self.landmarker.detect(np.ascontiguousarray(frames))
        return [landmark_bounds(p, f, frames.shape[1:3], self.kind) for p, f in zip(found.points, found.found)]

    def image_box(self, image: np.ndarray) -> Optional[Box]:
        self._last, self._searches = None, 1
        bounds = self.frame_bounds(image[None])[0]
        return None if bounds is None else square_box(bounds, INCREASE[self.kind][0], image.shape)

    def video_box(self, batches: Iterable[np.ndarray]) -> Optional[Box]:
        """The box of a video given as batches of frames (n, H, W, 3) in time order (a few at a time: any
        length in bounded memory)."""
        # A full search costs some 250 regressor passes; a video without a figure would pay it on every frame.
        found, shape, self._last, self._searches = [], None, None, VIDEO_SEARCHES
        for frames in batches:
            shape = frames.shape[1:]
            found += [bounds for bounds in self.frame_bounds(frames) if bounds is not None]
        if not found:
            return None
        return square_box(steady_union(found), INCREASE[self.kind][1], shape)


def _box_bounds(box: Box, increase: float) -> Bounds:
    """The landmark box a square crop box was made from (``square_box`` undone, up to its squaring)."""
    inner = box.side / (1 + 2 * increase)
    margin = (box.side - inner) / 2
    return box.x + margin, box.y + margin, box.x + box.side - margin, box.y + box.side - margin


def finder_for_kind(kind: str, regressor: str = SHIPPED_REGRESSOR) -> SubjectFinder:
    """The subject finder of ``kind`` (face, body, synthetic; the latter reads ``regressor``).

    Raises modules.evaluation.landmarks.MetricsUnavailable when its detector cannot be loaded."""
    from modules.evaluation.landmarks import BodyLandmarks, FaceLandmarks, SyntheticLandmarks

    landmarker = {"face": FaceLandmarks, "body": BodyLandmarks,
                  "synthetic": lambda: SyntheticLandmarks(regressor)}[kind]()
    return SubjectFinder(kind, landmarker)


def make_finder(config) -> tuple[Optional[SubjectFinder], str]:
    """The config's subject finder, or None and the reason there is none."""
    from modules.evaluation.landmarks import MetricsUnavailable, make_landmarker

    kind = config.metrics_params.landmarks
    if kind == "none":
        return None, "the config names no landmark detector (metrics_params.landmarks: none)"
    try:
        if kind == "synthetic":
            try:
                return SubjectFinder(kind, make_landmarker(config, (1024, 1024))), ""
            except MetricsUnavailable:
                if not os.path.isfile(SHIPPED_REGRESSOR):
                    raise
        return finder_for_kind(kind), ""         # synthetic: the regressor trained on the bundled data
    except MetricsUnavailable as reason:
        return None, str(reason)


def video_box_of(finder: SubjectFinder, video) -> Optional[Box]:
    """The box of a video (a modules.data.video_io reader), measured on at most VIDEO_FRAMES evenly spread frames,
    read 8 at a time."""
    count = video.num_frames
    indices = sorted(set(np.linspace(0, count - 1, min(count, VIDEO_FRAMES)).round().astype(int).tolist()))
    return finder.video_box(video.read(indices[i:i + 8]) for i in range(0, len(indices), 8))


# ----------------------------------------------------------------------------------------------------------
# Cropping and pasting back

def crop_to(frame: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The box's pixels of ``frame`` (H, W, 3), resized to the model's ``size``."""
    return resize_frame(np.ascontiguousarray(frame[box.y:box.y + box.side, box.x:box.x + box.side]), size)


def feather_mask(box: Box, shape: Sequence[int], feather: int = FEATHER_PX) -> np.ndarray:
    """(side, side, 1) float weights of the animated crop: 1 inside, falling linearly to 0 over ``feather``
    pixels towards each box edge that lies inside the photo (an edge on the photo's border needs no blend)."""
    feather = max(1, min(feather, box.side // 4))
    ramp = np.minimum((np.arange(box.side) + 0.5) / feather, 1.0)
    height, width = shape[:2]
    rows = np.minimum(ramp if box.y > 0 else 1.0, ramp[::-1] if box.y + box.side < height else 1.0)
    columns = np.minimum(ramp if box.x > 0 else 1.0, ramp[::-1] if box.x + box.side < width else 1.0)
    return (np.broadcast_to(rows, (box.side,))[:, None] * np.broadcast_to(columns, (box.side,))[None, :])[..., None]


def paste_back(photo: np.ndarray, animated: np.ndarray, box: Box, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """``animated`` (n, h, w, 3) uint8 crops -> (n, H, W, 3) copies of ``photo`` (H, W, 3) with each crop resized
    to the box and blended in by ``feather_mask``: outside the box, exactly the photo's pixels."""
    mask = feather_mask(box, photo.shape) if mask is None else mask
    region = photo[box.y:box.y + box.side, box.x:box.x + box.side].astype(np.float32)
    out = np.repeat(photo[None], len(animated), axis=0)
    for frame, crop in zip(out, animated):
        resized = resize_frame(np.ascontiguousarray(crop), (box.side, box.side)).astype(np.float32)
        blended = mask * resized + (1 - mask) * region
        frame[box.y:box.y + box.side, box.x:box.x + box.side] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


@dataclasses.dataclass
class CropPlan:
    """What ``--crop``/``--driving_crop`` decided: the boxes (None = the whole frame, fitted) and what to say."""
    source: Optional[Box]
    driving: Optional[Box]
    lines: list[str]

    def paster(self, photo: np.ndarray, paste: bool) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """The per-batch paste-back of the predictions into ``photo``, or None (no crop, or turned off)."""
        if self.source is None or not paste:
            return None
        mask = feather_mask(self.source, photo.shape)
        return lambda animated: paste_back(photo, animated, self.source, mask)


def _choose(setting: str, what: str, file: str, shape: Sequence[int],
            auto: Callable[[], tuple[Optional[Box], str]]) -> tuple[Optional[Box], str]:
    if setting == "none":
        return None, f"{what} none: the whole frame"
    if setting != "auto":
        box = check_box(parse_box(setting, what), shape, what, file)
        return box, f"{what} {box} (given)"
    box, why = auto()
    if box is None:
        warnings.warn(f"{what} auto: {why}; animating the whole frame (as --fit does)", stacklevel=3)
        return None, f"{what} auto: the whole frame"
    if fills_frame(box, shape):
        return None, f"{what} auto: the subject fills {os.path.basename(file)}; the whole frame"
    return box, f"{what} auto: {box} (x,y,w,h)"


def plan_crops(config, photo: np.ndarray, photo_file: str, video, video_file: str, crop: str,
               driving_crop: str) -> CropPlan:
    """Boxes for the source photo and the driving video (``video`` a modules.data.video_io reader)."""
    finder, reason = (None, "")
    if "auto" in (crop, driving_crop):
        finder, reason = make_finder(config)

    def photo_auto():
        if finder is None:
            return None, reason
        box = finder.image_box(photo)
        return box, f"no {finder.kind} found in {photo_file}"

    def video_auto():
        if finder is None:
            return None, reason
        return video_box_of(finder, video), f"no {finder.kind} found in {video_file}"

    source, first = _choose(crop, "--crop", photo_file, photo.shape, photo_auto)
    shape = video.read([0])[0].shape
    driving, second = _choose(driving_crop, "--driving_crop", video_file, shape, video_auto)
    return CropPlan(source, driving, [first, second])
