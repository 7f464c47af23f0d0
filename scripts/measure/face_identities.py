"""Which videos and photos show the same person: dlib's face descriptor, averaged per file, grouped by distance.

    python scripts/measure/face_identities.py PATH [PATH ...] [--frames 8] [--threshold 0.6] [--out FILE.json]

A PATH is a video (mp4/mov/gif, a frame folder), a photo, or a folder of them. For every file the largest
face of ``--frames`` evenly spaced frames is described by dlib's 128-d ResNet descriptor (the one behind the
AED metric, modules/evaluation/landmarks.py) and the descriptors are averaged. Two files whose mean descriptors lie
closer than ``--threshold`` are the same person (0.6 is dlib's own rule for its descriptor: 99.38% on LFW);
people are the connected groups of that relation. Use it to hold out people, not just videos: a test video of
someone the model trained on measures memory, not generalisation. Prints the groups and the distance of each
file to its nearest other file.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.core.outputs import write_json  # noqa: E402

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".gif", ".avi", ".mkv")


def media_files(paths: list[str]) -> list[str]:
    """Each file PATH, or what a folder PATH holds: its photos (one person each), its videos, and its
    subfolders as frame folders (one video each); sorted."""
    found = []
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"{path}: no such file or folder")
        if not os.path.isdir(path):
            found.append(path)
            continue
        for name in sorted(os.listdir(path)):
            entry = os.path.join(path, name)
            if name.startswith("."):
                continue
            if os.path.isdir(entry) or os.path.splitext(name)[1].lower() in PHOTO_EXTENSIONS + VIDEO_EXTENSIONS:
                found.append(entry)
    if not found:
        raise UserError(f"{' '.join(paths)}: no photos, videos or frame folders found")
    return found


def sample_frames(path: str, count: int) -> np.ndarray:
    """(n, H, W, 3) uint8: the photo, or ``count`` evenly spaced frames of the video."""
    from modules.data.video_io import load_image, open_video

    if os.path.isfile(path) and os.path.splitext(path)[1].lower() in PHOTO_EXTENSIONS:
        return load_image(path)[None]
    video = open_video(path)
    indices = np.unique(np.linspace(0, video.num_frames - 1, count).round().astype(int))
    return video.read(indices.tolist())


def mean_descriptor(landmarker, frames: np.ndarray) -> Optional[np.ndarray]:
    """The mean of the frames' face descriptors, or None when no frame shows a face."""
    embeddings = landmarker.detect(frames).embeddings
    found = embeddings[~np.isnan(embeddings).any(axis=1)]
    return found.mean(axis=0) if len(found) else None


def people(descriptors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected groups of the relation 'closer than threshold' over the rows of ``descriptors`` (N, D)."""
    distance = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=-1)
    group = list(range(len(descriptors)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i, j in zip(*np.nonzero(distance < threshold)):
        group[root(int(i))] = root(int(j))
    members: dict[int, list[int]] = {}
    for i in range(len(descriptors)):
        members.setdefault(root(i), []).append(i)
    return sorted(members.values())


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="videos, photos, frame folders, or folders of them")
    parser.add_argument("--frames", type=int, default=8, help="frames described per video (default 8)")
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="descriptor distance under which two files show the same person (dlib's 0.6)")
    parser.add_argument("--out", default=None, help="also write the groups and distances to this JSON file")
    args = parser.parse_args(argv)

    def command() -> None:
        from modules.evaluation.landmarks import FaceLandmarks, MetricsUnavailable

        if args.frames < 1 or not args.threshold > 0:
            raise UserError(f"--frames {args.frames} / --threshold {args.threshold}: expected positive values")
        files = media_files(args.paths)
        try:
            landmarker = FaceLandmarks()
        except MetricsUnavailable as reason:
            raise UserError(str(reason)) from None
        described, vectors, faceless = [], [], []
        for path in files:
            vector = mean_descriptor(landmarker, sample_frames(path, args.frames))
            (faceless.append(path) if vector is None else (described.append(path), vectors.append(vector)))
        report = {"threshold": args.threshold, "no_face": faceless, "people": [], "nearest": {}}
        if described:
            matrix = np.stack(vectors)
            distance = np.linalg.norm(matrix[:, None] - matrix[None], axis=-1) + np.diag([np.inf] * len(matrix))
            report["people"] = [[described[i] for i in group] for group in people(matrix, args.threshold)]
            report["files"] = described
            report["distance"] = np.round(np.where(np.isinf(distance), 0.0, distance), 4).tolist()
            report["nearest"] = {described[i]: [described[int(distance[i].argmin())], float(distance[i].min())]
                                 for i in range(len(described)) if len(described) > 1}
        for number, group in enumerate(report["people"]):
            print(f"person {number}: {', '.join(os.path.basename(p) for p in group)}")
        for path, (other, value) in report["nearest"].items():
            print(f"  {os.path.basename(path)}: nearest {os.path.basename(other)} at {value:.3f}")
        for path in faceless:
            print(f"no face found in {path}", file=sys.stderr)
        print(f"{len(report['people'])} people in {len(described)} files ({len(faceless)} without a face)")
        if args.out:
            write_json(args.out, report)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
