"""One scorer for every results table: generated (or baseline) frames against the real ones, per frame.

Reconstruction and dataset animation both ask the same question of a batch: how close are these frames to
those? ``FrameScorer`` answers with L1, PSNR and SSIM always, with the motion-region L1 (L1 where the real
frame differs from the source image, modules/metrics.py) when the target knows its source, and with AKD, MKR
and AED when the config's landmark detector can run (modules/landmarks.py). What cannot be computed is listed
in ``skipped`` with the reason, which goes into metrics.json as it is.

Landmarks of the target frames are found once per batch and shared by every candidate (the prediction and
the trivial baselines), so a baseline costs one more detection pass, not two.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from modules.landmarks import Landmarks, MetricsUnavailable, make_landmarker
from modules.metrics import aed, akd, l1, mkr, motion_region, psnr, region_l1, ssim
from modules.video_io import to_uint8

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

    @property
    def metrics(self) -> list[str]:
        return list(PIXEL_METRICS) + ["motion_l1"] + list(self.landmark_metrics)

    def table(self, pooled: dict[str, list[float]], candidates: tuple[str, ...]) -> dict[str, dict]:
        """{candidate: {metric: mean over frames}} from per-frame values pooled as "<candidate>_<metric>"."""
        return {who: {name: frame_mean(pooled[f"{who}_{name}"]) for name in self.metrics} for who in candidates}

    def landmarks(self, frames: torch.Tensor) -> Optional[Landmarks]:
        """Landmarks of frames (T, 3, H, W) in [0, 1], or None without a detector."""
        if self.landmarker is None:
            return None
        return self.landmarker.detect(to_uint8(frames))

    def target(self, frames: torch.Tensor, source: Optional[torch.Tensor] = None) -> "Target":
        """Real frames (T, 3, H, W) and, for the motion-region L1, the (1, 3, H, W) source image they moved from."""
        region = None if source is None else motion_region(frames, source.to(frames.device))
        return Target(frames, self.landmarks(frames), region)

    def score(self, candidate: torch.Tensor, target: "Target",
              candidate_landmarks: Optional[Landmarks] = None) -> dict[str, np.ndarray]:
        """Scores of ``candidate`` frames (T, 3, H, W) against ``target``: {metric: (T,)}.
        ``candidate_landmarks`` skips the detection when the caller already has them."""
        scores = {name: metric(candidate.float(), target.frames.float()).cpu().numpy()
                  for name, metric in PIXEL_METRICS.items()}
        if target.region is not None:
            scores["motion_l1"] = region_l1(candidate.float(), target.frames.float(), target.region).cpu().numpy()
        else:
            scores["motion_l1"] = np.full(len(candidate), np.nan)
        if self.landmark_metrics:
            found = candidate_landmarks if candidate_landmarks is not None else self.landmarks(candidate)
            for name, metric in self.landmark_metrics.items():
                scores[name] = metric(target.landmarks, found)
        return scores


class Target:
    """A batch of real frames with what scoring against them needs."""

    def __init__(self, frames: torch.Tensor, landmarks: Optional[Landmarks],
                 region: Optional[torch.Tensor] = None) -> None:
        self.frames = frames                  # float (T, 3, H, W) in [0, 1]
        self.landmarks = landmarks
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
