"""One scorer for every results table: generated (or baseline) frames against the real ones, per frame.

Reconstruction and dataset animation both ask the same question of a batch: how close are these frames to
those? ``FrameScorer`` answers with L1, PSNR and SSIM always, with the motion-region L1 (L1 where the real
frame differs from the source image, modules/evaluation/metrics.py) when the target knows its source, with AKD, MKR and
AED when the config's landmark detector can run (modules/evaluation/landmarks.py), and with the steadiness of the video
(flicker; jitter where landmarks run) when the caller keeps a ``Track`` per candidate and video. What cannot
be computed is listed in ``skipped`` with the reason, which goes into metrics.json as it is.

Landmarks of the target frames are found once per batch and shared by every candidate (the prediction and the
trivial baselines), so a baseline costs one more detection pass, not two.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import torch

from modules.core.pictures import to_uint8
from modules.data.video_io import open_video
from modules.evaluation.landmarks import Landmarks, MetricsUnavailable, make_landmarker
from modules.evaluation.metrics import aed, akd, flicker, jitter, l1, mkr, motion_region, psnr, region_l1, ssim

PIXEL_METRICS = {"l1": l1, "psnr": psnr, "ssim": ssim}
LANDMARK_METRICS = {"akd": akd, "mkr": mkr, "aed": aed}

# What each detector can measure, and why it cannot measure the rest.
NOT_MEASURED = {
    "body": {"aed": "AED on bodies needs a person re-identification network, which is not available offline"},
    "face": {},
    "synthetic": {"mkr": "the keypoint regressor always places every joint, so no keypoint can go missing",
                  "aed": "there is no identity embedding network for the synthetic figures"},
}


class FrameScorer:
    """Per-frame metrics of candidate frames against target frames.

    ``scorer.target(frames)`` prepares a batch of real frames; ``scorer.score(candidate, target)`` then gives
    ``{metric: (T,) array}`` for a candidate batch of the same length. Frames are float tensors (T, 3, H, W) in
    [0, 1] (pixel metrics see them unrounded, as FOMM's L1 does; detectors see them as uint8). ``landmarks``
    is exposed so a caller can find the landmarks of a frame it reuses (the source) once.
    """

    def __init__(self, config, frame_size: tuple[int, int]) -> None:
        self.landmarker = None
        try:
            self.landmarker = make_landmarker(config, frame_size)
            self.skipped: dict[str, str] = dict(NOT_MEASURED[self.landmarker.name])
        except MetricsUnavailable as reason:
            self.skipped = {name: str(reason) for name in LANDMARK_METRICS}
        self.landmark_metrics = {name: metric for name, metric in LANDMARK_METRICS.items()
                                 if name not in self.skipped}
        if not self.landmark_metrics:        # jitter is the landmarks' frame-to-frame wobble: say why it is gone
            reasons = sorted(set(self.skipped.values()))
            self.skipped["jitter"] = "it follows the landmarks, which are not measured here: " + "; ".join(reasons)

    @property
    def metrics(self) -> list[str]:
        steady = ["jitter"] if self.landmark_metrics else []
        return list(PIXEL_METRICS) + ["motion_l1"] + list(self.landmark_metrics) + steady + ["flicker"]

    def table(self, pooled: dict[str, list[float]], candidates: tuple[str, ...]) -> dict[str, dict]:
        """{candidate: {metric: mean over frames}} from per-frame values pooled as "<candidate>_<metric>"."""
        return {who: {name: frame_mean(pooled[f"{who}_{name}"]) for name in self.metrics} for who in candidates}

    def landmarks(self, frames: torch.Tensor) -> Optional[Landmarks]:
        """Landmarks of frames (T, 3, H, W) in [0, 1], or None without a detector."""
        if self.landmarker is None:
            return None
        return self.landmarker.detect(to_uint8(frames))

    def target(self, frames: torch.Tensor, source: Optional[torch.Tensor] = None,
               exact: Optional[Landmarks] = None) -> "Target":
        """Real frames (T, 3, H, W) and, for the motion-region L1, the (1, 3, H, W) source image they moved from;
        ``exact``: their true landmarks where the data know them (the synthetic renderer's joints), which jitter
        then compares with (AKD keeps the detector's on both sides, the papers' protocol)."""
        region = None if source is None else motion_region(frames, source.to(frames.device))
        return Target(frames, self._real_landmarks(frames), region, exact)

    def _real_landmarks(self, frames: torch.Tensor) -> Optional[Landmarks]:
        """``landmarks`` of real frames, remembered for this process by the frames' bytes when the detector
        is a fixed pretrained one (dlib, MediaPipe): a learning curve scores the same test videos once per
        checkpoint, and their landmarks were half of each evaluation's time."""
        if self.landmarker is None or self.landmarker.name not in ("face", "body"):
            return self.landmarks(frames)
        images = to_uint8(frames)
        key = (self.landmarker.name, images.shape, hashlib.sha1(images.tobytes()).digest())
        if key not in _REAL_LANDMARKS:
            if len(_REAL_LANDMARKS) >= REAL_LANDMARKS_KEPT:
                _REAL_LANDMARKS.clear()
            _REAL_LANDMARKS[key] = self.landmarker.detect(images)
        return _REAL_LANDMARKS[key]

    def score(self, candidate: torch.Tensor, target: "Target", candidate_landmarks: Optional[Landmarks] = None,
              track: Optional["Track"] = None) -> dict[str, np.ndarray]:
        """Scores of ``candidate`` frames (T, 3, H, W) against ``target``: {metric: (T,)}.
        ``candidate_landmarks`` skips the detection when the caller already has them. ``track`` (one per
        candidate and video, the batches given in order) carries the frames before, which jitter and flicker
        need; without it they are NaN."""
        scores = {name: metric(candidate.float(), target.frames.float()).cpu().numpy()
                  for name, metric in PIXEL_METRICS.items()}
        if target.region is not None:
            scores["motion_l1"] = region_l1(candidate.float(), target.frames.float(), target.region).cpu().numpy()
        else:
            scores["motion_l1"] = np.full(len(candidate), np.nan)
        found = None
        if self.landmark_metrics:
            found = candidate_landmarks if candidate_landmarks is not None else self.landmarks(candidate)
            for name, metric in self.landmark_metrics.items():
                scores[name] = metric(target.landmarks, found)
        steady = track.update(candidate.float(), target, found) if track is not None else {}
        for name in ["flicker"] + (["jitter"] if self.landmark_metrics else []):
            scores[name] = steady.get(name, np.full(len(candidate), np.nan))
        return scores


REAL_LANDMARKS_KEPT = 4096          # batches; a few kB each
_REAL_LANDMARKS: dict[tuple, Landmarks] = {}


class Track:
    """The last frames of one candidate's video and of the real one, for the metrics of consecutive frames
    (modules/evaluation/metrics.py: jitter needs two frames before, flicker one)."""

    def __init__(self) -> None:
        self.frames: Optional[tuple[torch.Tensor, torch.Tensor]] = None     # (generated, real) last frame
        self.landmarks: Optional[tuple[Landmarks, Landmarks]] = None       # (generated, real) last two

    def update(self, candidate: torch.Tensor, target: "Target", found: Optional[Landmarks]) -> dict[str, np.ndarray]:
        count = len(candidate)
        generated, real = candidate, target.frames.float()
        if self.frames is not None:
            generated, real = torch.cat([self.frames[0], generated]), torch.cat([self.frames[1], real])
        scores = {"flicker": flicker(generated, real).cpu().numpy()[-count:]}
        self.frames = (generated[-1:], real[-1:])
        reference = target.exact if target.exact is not None else target.landmarks
        if found is not None and reference is not None:
            mine, theirs = found, reference
            if self.landmarks is not None:
                mine, theirs = _joined(self.landmarks[0], mine), _joined(self.landmarks[1], theirs)
            scores["jitter"] = jitter(theirs, mine)[-count:]
            self.landmarks = (_tail(mine, 2), _tail(theirs, 2))
        return scores


def _joined(first: Landmarks, second: Landmarks) -> Landmarks:
    return Landmarks(np.concatenate([first.points, second.points]), np.concatenate([first.found, second.found]))


def _tail(landmarks: Landmarks, count: int) -> Landmarks:
    return Landmarks(landmarks.points[-count:], landmarks.found[-count:])


class Target:
    """A batch of real frames with what scoring against them needs."""

    def __init__(self, frames: torch.Tensor, landmarks: Optional[Landmarks],
                 region: Optional[torch.Tensor] = None, exact: Optional[Landmarks] = None) -> None:
        self.frames = frames                  # float (T, 3, H, W) in [0, 1]
        self.landmarks = landmarks
        self.exact = exact                    # the true landmarks, when the data know them, or None
        self.region = region                  # (T, 1, H, W) bool: where the frames differ from the source, or None


def repeat_landmarks(landmarks: Landmarks, count: int) -> Landmarks:
    """One frame's landmarks repeated ``count`` times (the copy-source baseline's)."""
    embeddings = None if landmarks.embeddings is None else np.repeat(landmarks.embeddings[:1], count, axis=0)
    return Landmarks(np.repeat(landmarks.points[:1], count, axis=0), np.repeat(landmarks.found[:1], count, axis=0),
                     embeddings)


def table_lines(table: dict[str, dict], skipped: dict[str, str]) -> list[str]:
    """The console form of a results table: a row per candidate, then one line per distinct skip reason."""
    lines = [f"{who.replace('_', ' '):<12} " + "  ".join(f"{k} {'n/a' if v is None else format(v, '.4f')}"
                                                         for k, v in row.items()) for who, row in table.items()]
    return lines + skipped_lines(skipped)


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    """'akd, mkr skipped: <reason>' lines, one per distinct reason, for the console."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    return [f"{', '.join(names)} skipped: {reason}" for reason, names in by_reason.items()]


def frame_mean(values) -> Optional[float]:
    """Mean over frames, leaving out frames with nothing to measure (NaN); None (JSON null) if none is left."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def score_against_truth(scorer: FrameScorer, prediction: np.ndarray, source: np.ndarray, driving,
                        truth, batch_size: int, exact: Optional[Landmarks] = None) -> dict[str, list[float]]:
    """Per-frame scores of the prediction and of the two trivial baselines (copy the source frame, copy the
    driving frame) against the ground-truth animation (the synthetic source identity moved by the driver's
    pose): {"<candidate>_<metric>": values}. ``exact``: the animation's true joints (jitter's reference)."""
    from modules.data.dataset import frames_to_tensor

    count = min(len(prediction), truth.num_frames, driving.num_frames)
    source_tensor = frames_to_tensor(source[None])
    source_landmarks = scorer.landmarks(source_tensor)
    scores: dict[str, list[float]] = {}
    tracks = {who: Track() for who in ("prediction", "copy_source", "copy_driving")}
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        known = None if exact is None else Landmarks(exact.points[indices], exact.found[indices])
        target = scorer.target(frames_to_tensor(truth.read(indices)), source=source_tensor, exact=known)
        copies = None if source_landmarks is None else repeat_landmarks(source_landmarks, len(indices))
        candidates = (("prediction", frames_to_tensor(prediction[indices]), None),
                      ("copy_source", source_tensor.expand(len(indices), -1, -1, -1), copies),
                      ("copy_driving", frames_to_tensor(driving.read(indices)), None))
        for who, frames, found in candidates:
            for metric, values in scorer.score(frames, target, found, tracks[who]).items():
                scores.setdefault(f"{who}_{metric}", []).extend(values.tolist())
    return scores


def exact_joints(truth_folder: str) -> Optional[Landmarks]:
    """The synthetic renderer's joints of a ground-truth animation (``animation-gt-keypoints/<pair>.npy``,
    pixels), normalised as landmarks are, or None where the dataset has none."""
    root, name = os.path.split(os.path.normpath(truth_folder))
    path = os.path.join(os.path.dirname(root), "animation-gt-keypoints", name + ".npy")
    if not os.path.isfile(path):
        return None
    from modules.evaluation.keypoint_regressor import pixels_to_normalised

    pixels = np.load(path)
    points = pixels_to_normalised(pixels, open_video(truth_folder).read([0]).shape[1]).astype(np.float64)
    return Landmarks(points, np.ones(points.shape[:2], bool))
