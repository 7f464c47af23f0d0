"""Pseudo-labels for a labelled stage one: MediaPipe Pose (bodies) or dlib's 68 face landmarks on every frame.

    python scripts/label_keypoints.py DATA --landmarks body|face [--folder keypoints] [--overwrite]

For every video of DATA (``train/`` and ``test/``, or the root if it has no split) it writes
``DATA/<folder>/<split>/<video>.npy``, float32 (T, P, 3): x, y in pixels of the frames as stored (pixel
centres at 0 .. side - 1) and a visibility, 1 where the detector found the point and 0 where it did not
(the point is then missing for training), beside ``DATA/<folder>/points.json`` (the P point names and the
left/right pairs a horizontal flip swaps). That is the layout any annotated dataset can use
(modules/data/keypoint_labels.py), and what ``family: detector`` configs train on (config/taichi-256-detector.yaml,
config/vox-256-detector.yaml).

It is resumable: a video whose label file is already complete is skipped, each file is written to a
temporary name and renamed when whole, so an interrupted run loses at most the video it was on. The same
detectors give the AKD/MKR metrics (modules/evaluation/landmarks.py), so labels and metrics speak of the same points.
Pose landmarks are unreliable below 128 px (a person found in 9 of 40 real 64 px frames): label the videos
at the size they were recorded, not after shrinking them.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.data.keypoint_labels import POINTS_FILE, write_points_file  # noqa: E402

# MediaPipe Pose's 33 landmarks, in its order. "left" is the person's left.
BODY_POINTS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index")
BODY_MIRROR = tuple((name, "right" + name[4:]) for name in BODY_POINTS if name.startswith("left"))


def _face_points() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """dlib's 68 points (the iBUG 300-W layout) named by region and index, and their mirror pairs."""
    regions = [("jaw", 0, 17), ("brow", 17, 27), ("nose", 27, 36), ("eye", 36, 48), ("mouth", 48, 68)]
    names = tuple(f"{region}_{i:02d}" for region, start, end in regions for i in range(start, end))
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [(31, 35), (32, 34)]
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    return names, tuple((names[a], names[b]) for a, b in pairs)


FACE_POINTS, FACE_MIRROR = _face_points()
LAYOUTS = {"body": (BODY_POINTS, BODY_MIRROR), "face": (FACE_POINTS, FACE_MIRROR)}


def _landmarker(kind: str):
    from modules.evaluation.landmarks import BodyLandmarks, FaceLandmarks, MetricsUnavailable

    try:
        return BodyLandmarks() if kind == "body" else FaceLandmarks()
    except MetricsUnavailable as reason:
        raise UserError(f"--landmarks {kind}: {reason}") from None


def _videos(root: str) -> list[tuple[str, str]]:
    """(split folder relative to root, video path) of every video of the dataset, sorted."""
    from modules.data.dataset import _candidates

    splits = [name for name in ("train", "test") if os.path.isdir(os.path.join(root, name))]
    found = []
    for split in splits or ["."]:
        found += [(split, path) for path in _candidates(os.path.join(root, split))]
    return found


def _complete(path: str, num_frames: int, num_points: int) -> bool:
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return labels.shape == (num_frames, num_points, 3)


def _save(path: str, labels: np.ndarray) -> None:
    """Write ``labels`` to a temporary file beside ``path`` and rename it: a label file is whole or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npy"
    try:
        np.save(temporary, labels.astype(np.float32))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def label_dataset(root: str, kind: str, folder: str = "keypoints", overwrite: bool = False,
                  batch_size: int = 16, progress: bool = True) -> dict:
    """Label every video of ``root`` with the ``kind`` detector; returns counts of what was done."""
    from tqdm import tqdm

    from modules.data.video_io import open_video

    if kind not in LAYOUTS:
        raise UserError(f"--landmarks: expected body or face, got {kind!r}")
    if not os.path.isdir(root):
        raise UserError(f"{root}: dataset folder not found")
    names, mirror = LAYOUTS[kind]
    out = os.path.join(root, folder)
    points_path = os.path.join(out, POINTS_FILE)
    if os.path.isfile(points_path) and not overwrite:
        with open(points_path, encoding="utf-8") as stream:
            existing = json.load(stream).get("names")
        if existing != list(names):
            raise UserError(f"{points_path}: names other points ({len(existing or [])}, not {kind}'s {len(names)}); "
                            f"label into another --folder, or pass --overwrite")
    write_points_file(out, names, mirror)
    videos = _videos(root)
    if not videos:
        raise UserError(f"{root}: no videos found (frame folders or video files, in train/ and test/ or the root)")
    opened = [(split, open_video(path)) for split, path in videos]
    todo = [(split, video) for split, video in opened if overwrite or not _complete(
        os.path.join(out, split, video.name + ".npy"), video.num_frames, len(names))]
    landmarker = _landmarker(kind) if todo else None
    found_points = total_points = 0
    small = set()
    with tqdm(total=sum(video.num_frames for _, video in todo), unit="frame", desc=f"{kind} labels",
              disable=not progress, dynamic_ncols=True) as bar:
        for split, video in todo:
            rows = []
            for frames in video.iter_frames(batch_size):          # (n, H, W, 3) uint8, as stored
                height, width = frames.shape[1:3]
                if min(height, width) < landmarker.min_size:
                    small.add(video.name)
                marks = landmarker.detect(frames)
                # landmarks.py normalises pixel centre i to (i + 0.5) / side: back to pixels
                xy = marks.points * np.array([width, height]) - 0.5
                rows.append(np.concatenate([xy, marks.found[..., None].astype(np.float64)], axis=-1))
                found_points += int(marks.found.sum())
                total_points += marks.found.size
                bar.update(len(frames))
            _save(os.path.join(out, split, video.name + ".npy"), np.concatenate(rows))
    if small:
        print(f"warning: {len(small)} video(s) below {landmarker.min_size} px, where {kind} landmarks are often "
              f"missed (e.g. {sorted(small)[0]}); label the full-size videos instead", file=sys.stderr)
    return {"videos": len(opened), "labelled": len(todo), "skipped": len(opened) - len(todo),
            "found": found_points / total_points if total_points else None, "folder": out}


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the dataset folder (train/ and test/, or videos at its root)")
    parser.add_argument("--landmarks", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--folder", default="keypoints", help="labels go to DATA/FOLDER (default: keypoints)")
    parser.add_argument("--overwrite", action="store_true", help="label every video again, and replace points.json")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)

    def command() -> None:
        done = label_dataset(args.data, args.landmarks, args.folder, args.overwrite, args.batch_size)
        share = "n/a" if done["found"] is None else f"{100 * done['found']:.1f}%"
        print(f"{done['labelled']} video(s) labelled, {done['skipped']} already complete, into {done['folder']}; "
              f"points found: {share}")

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
