"""Keypoint labels on disk: the format any annotated dataset can use (docs/data.md, "Keypoint labels").

    <root>/<folder>/points.json           {"names": [P point names], "mirror": [[left, right], ...]}
    <root>/<folder>/<split>/<video>.npy   float32 (T, P, 3): x, y in pixels of the stored frames (pixel centres at
                                          0 .. side - 1), visibility in [0, 1]; or (T, P, 2), visible where finite

``<folder>`` is ``keypoints`` by default, ``<split>`` is ``train``/``test`` (absent when the dataset has no
split folders), ``<video>`` the video's name (a frame folder's, or a file's without its extension). A point
missing in a frame has NaN coordinates or visibility 0. The synthetic generator and scripts/label_keypoints.py
write this layout. numpy only: the synthetic generator uses it without torch.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import numpy as np

from modules.core.errors import UserError

if TYPE_CHECKING:
    from modules.config.sections import LabelParams

POINTS_FILE = "points.json"


def write_points_file(folder: str | os.PathLike, names: Sequence[str], mirror: Sequence[Sequence[str]]) -> None:
    """``<folder>/points.json``: the label files' point names (their order) and the left/right name pairs."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, POINTS_FILE), "w", encoding="utf-8") as stream:
        json.dump({"names": list(names), "mirror": [list(pair) for pair in mirror]}, stream, indent=1)
        stream.write("\n")


class LabelLayout(NamedTuple):
    """Which columns of the label files are the K keypoints, and how a horizontal flip permutes them."""
    folder: str                           # <root>/<folder>
    columns: tuple[int, ...]              # (K,) point index in the label files of each keypoint
    mirror: tuple[int, ...]               # (K,) the keypoint each becomes in the mirror image (itself if central)
    min_visibility: float


def label_layout(root_dir: str, labels: "LabelParams", needs_mirror: bool) -> LabelLayout:
    """Resolve the config's point names against ``<root>/<folder>/points.json``; one-line errors name the file."""
    folder = os.path.join(root_dir, labels.folder)
    path = os.path.join(folder, POINTS_FILE)
    try:
        with open(path, encoding="utf-8") as stream:
            described = json.load(stream)
        names, pairs = list(described["names"]), [tuple(pair) for pair in described.get("mirror", [])]
        if not all(isinstance(n, str) for n in names) or not all(len(p) == 2 for p in pairs):
            raise ValueError("names must be strings, mirror a list of [left, right] pairs")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; keypoint labels need it (the point names of the label files; "
                        f"scripts/label_keypoints.py and scripts/synthetic_dataset.py write it)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: expected {{\"names\": [...], \"mirror\": [[left, right], ...]}} ({error})") from None
    unknown = [name for name in labels.points if name not in names]
    if unknown:
        raise UserError(f"model_params.label_params.points: {', '.join(map(repr, unknown))} not in {path} "
                        f"(its points: {', '.join(names)})")
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    chosen = list(labels.points)
    lonely = [name for name in chosen if name in partner and partner[name] not in chosen]
    if lonely and needs_mirror:
        raise UserError(f"model_params.label_params.points: {', '.join(lonely)} without "
                        f"{', '.join(partner[n] for n in lonely)}: a horizontal flip turns one into the other "
                        f"(add both, or set horizontal_flip: false)")
    mirror = tuple(chosen.index(partner[name]) if name in partner and partner[name] in chosen else k
                   for k, name in enumerate(chosen))
    return LabelLayout(folder, tuple(names.index(name) for name in chosen), mirror, labels.min_visibility)


def read_labels(path: str, num_frames: int, num_points: Optional[int] = None) -> np.ndarray:
    """A label file: float32 (T, P, 3) with x, y in pixels of the stored frames and a visibility in [0, 1]
    (a (T, P, 2) file is visible wherever its coordinates are finite)."""
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: keypoint labels not found (every training video needs one)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a numpy array of keypoint labels ({error})") from None
    if labels.ndim != 3 or labels.shape[2] not in (2, 3) or labels.shape[0] != num_frames or \
            (num_points is not None and labels.shape[1] != num_points):
        points = "P" if num_points is None else str(num_points)
        raise UserError(f"{path}: keypoint labels of shape {tuple(labels.shape)}, expected ({num_frames}, {points}, "
                        f"2 or 3): one row per frame, x, y in pixels [, visibility]")
    return labels


def labels_to_normalized(rows: np.ndarray, layout: LabelLayout, stored_size: tuple[int, int],
                         frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label rows (n, P, 2|3) in pixels of frames stored at ``stored_size`` (H, W) -> the K keypoints (n, K, 2)
    in [-1, 1] of frames resized to ``frame_size`` (pixel centres at -1 and +1, as the detector's grid) and
    their visibility (n, K) float32 (0 where missing; missing coordinates become 0)."""
    rows = np.asarray(rows, dtype=np.float32)[:, list(layout.columns)]
    xy = rows[..., :2]
    visible = np.isfinite(xy).all(axis=-1)
    if rows.shape[-1] == 3:
        visible &= np.nan_to_num(rows[..., 2], nan=0.0) >= layout.min_visibility
    # Pixel centres move as in a resize: (x + 0.5) * new / old - 0.5, then [0, side - 1] -> [-1, 1].
    (stored_h, stored_w), (height, width) = stored_size, frame_size
    scale = np.array([width / stored_w, height / stored_h], dtype=np.float32)
    sides = np.array([max(width - 1, 1), max(height - 1, 1)], dtype=np.float32)
    normalized = 2 * ((np.nan_to_num(xy) + 0.5) * scale - 0.5) / sides - 1
    return np.where(visible[..., None], normalized, 0).astype(np.float32), visible.astype(np.float32)
