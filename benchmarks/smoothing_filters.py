"""One-Euro against a constant-velocity Kalman filter on real motion: which one ``--smooth`` uses.

    python benchmarks/smoothing_filters.py [--data data/synthetic] [--noise 0.01 0.02] [--fps 25]

The synthetic dataset's ground-truth joint tracks (every video of both splits, coordinates mapped to
[-1, 1] like the detector's keypoints) are the clean motion; Gaussian noise of ``--noise`` (in those units:
0.01 is a third of a pixel of a 64-px frame) is the detector's jitter. Each filter runs online at several
strengths; the table gives the error against the clean track (RMS, the number to lower), the error it
causes on the clean track itself (its lag and overshoot: what smoothing costs), and the jitter left (RMS
frame-to-frame acceleration, clean tracks' own in the first row).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.inference.smoothing import one_euro  # noqa: E402


class ConstantVelocityKalman:
    """Per-coordinate Kalman filter with state (position, velocity) and white-acceleration process noise;
    ``strength`` s scales the assumed measurement-to-process noise ratio by s squared."""

    def __init__(self, strength: float, rate: float, acceleration: float = 2.0, measurement: float = 0.01):
        dt = 1.0 / rate
        self.F = np.array([[1.0, dt], [0.0, 1.0]])
        self.Q = (acceleration / strength) ** 2 * np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt ** 2]])
        self.R = measurement ** 2
        self.state = None
        self.P = None

    def filter_sequence(self, samples: np.ndarray) -> np.ndarray:
        out = np.empty_like(samples)
        for t, z in enumerate(samples):
            if self.state is None:
                self.state = np.stack([z, np.zeros_like(z)])                 # (2, ...)
                self.P = np.broadcast_to(np.diag([self.R, 1.0]), z.shape + (2, 2)).copy()
                out[t] = z
                continue
            x = np.einsum("ij,j...->i...", self.F, self.state)
            P = np.einsum("ij,...jk,lk->...il", self.F, self.P, self.F) + self.Q
            gain = P[..., :, 0] / (P[..., 0, 0] + self.R)[..., None]        # (..., 2)
            innovation = z - x[0]
            self.state = x + np.moveaxis(gain, -1, 0) * innovation
            self.P = P - gain[..., :, None] * P[..., None, 0, :]
            out[t] = self.state[0]
        return out


def tracks(root: str) -> list[np.ndarray]:
    """Every ground-truth joint track (T, 15, 2) of the dataset, in [-1, 1]."""
    files = sorted(glob.glob(os.path.join(root, "keypoints", "*", "*.npy")))
    if not files:
        raise SystemExit(f"no joint tracks under {root}/keypoints: python scripts/synthetic_dataset.py --out {root}")
    size = 64.0
    return [np.load(path).astype(np.float64) / size * 2 - 1 for path in files]


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2)))


def run(kind: str, strength: float, track: np.ndarray, rate: float, sigma: float) -> np.ndarray:
    if kind == "none":
        return track
    if kind == "one-euro":
        return one_euro(strength, rate).filter_sequence(torch.from_numpy(track)).numpy()
    return ConstantVelocityKalman(strength, rate, measurement=sigma).filter_sequence(track)   # told the noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args()
    clean = tracks(args.data)
    rng = np.random.default_rng(0)
    print(f"{len(clean)} tracks of {clean[0].shape[1]} joints, {sum(len(t) for t in clean)} frames; {args.fps:g} fps")
    print(f"{'noise':>6} {'filter':<9} {'strength':>8} {'error vs clean':>14} {'error on clean':>14} {'jitter':>8}")
    for sigma in args.noise:
        noisy = [t + rng.normal(0, sigma, t.shape) for t in clean]
        settings = [("none", 0.0)] + [(k, s) for k in ("one-euro", "kalman") for s in (0.5, 1, 2, 4)]
        for kind, strength in settings:
            errors, lags, jitters = [], [], []
            for track, measured in zip(clean, noisy):
                errors.append(run(kind, strength, measured, args.fps, sigma) - track)
                lags.append(run(kind, strength, track, args.fps, sigma) - track)
                filtered = run(kind, strength, measured, args.fps, sigma)
                jitters.append(np.diff(filtered, n=2, axis=0))
            print(f"{sigma:6.3f} {kind:<9} {strength:8.1f} {rms(np.concatenate(errors)):14.5f} "
                  f"{rms(np.concatenate(lags)):14.5f} {rms(np.concatenate(jitters)):8.5f}")
    print(f"clean tracks' own jitter: {rms(np.concatenate([np.diff(t, n=2, axis=0) for t in clean])):.5f}")


if __name__ == "__main__":
    main()
