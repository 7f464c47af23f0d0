"""A labelled detector's error to the keypoint labels, per video, beside the mean-pose baseline.

    python scripts/measure/detector_error.py CHECKPOINT [--config CONFIG] [--data ROOT] [--split test] [--frames N]
                                     [--out FILE.json] [--device auto|cpu|cuda]

CHECKPOINT is a ``family: detector`` checkpoint, its run folder or its model file (or any checkpoint holding a
``kp_detector``, with ``--config`` naming ``model_params.label_params``); ``--config`` replaces the config it
holds and ``--data`` the config's ``dataset_params.root_dir``. For every video of the split the detector runs on
the frames as training reads them (resized to ``dataset_params.frame_shape``; ``--frames N``: N evenly spaced
frames per video) and its K keypoints are compared with the labels of the points ``label_params.points`` names
(``<root>/<folder>/<split>/<video>.npy``, docs/data.md, "Keypoint labels"), in pixels of the frames as stored, where
the labels are. The keypoints reach those pixels by the inverse of the map that turns labels into the training
loss's targets, so a detector that answers exactly its targets scores 0. A label counts where its coordinates
are finite and its visibility is at least ``label_params.min_visibility``, as in the training loss.

The baseline is the mean pose: every frame answered with each point's mean over the train split's visible
labels (normalised by the frame size as the targets are, so videos of different sizes mix). A detector near it
has learnt where the points are on average, not where they are in each frame. One line per video, an overall
line weighted by visible labels, then:

    detector 2.31 px, mean pose 4.87 px (0.47 of the baseline) over 3 videos, 1234 frames

``--out`` writes the same numbers as JSON (atomically).
"""
from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.core.outputs import write_json  # noqa: E402
from modules.data.keypoint_labels import LabelLayout, label_layout, labels_to_normalized, read_labels  # noqa: E402
from scripts.measure.keypoints_vs_joints import detector_values, load_detector  # noqa: E402

BATCH = 32                    # frames per detector call: bounded memory on long videos


class LabelledVideo(NamedTuple):
    """A video of the split with its label file."""
    name: str
    video: Any                            # modules.data.video_io.Video, frames resized to frame_shape
    stored_size: tuple[int, int]          # (H, W) as stored: the pixels the labels are in
    labels: np.ndarray                    # (T, P, 2|3) the label file, memory-mapped


def to_stored_pixels(value: np.ndarray, stored_size: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """Keypoints (..., 2) in [-1, 1] of frames resized to ``frame_size`` -> pixels of the frames as stored at
    ``stored_size`` (H, W): the inverse of keypoint_labels.labels_to_normalized, the training targets' map."""
    (stored_h, stored_w), (height, width) = stored_size, frame_size
    sides = np.array([max(width - 1, 1), max(height - 1, 1)], np.float64)
    scale = np.array([stored_w / width, stored_h / height], np.float64)
    return ((np.asarray(value, np.float64) + 1) / 2 * sides + 0.5) * scale - 0.5


def chosen_frames(num_frames: int, wanted: Optional[int]) -> np.ndarray:
    """``wanted`` evenly spaced frame indices of a ``num_frames`` video, first and last included (all if None)."""
    if wanted is None or wanted >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, wanted)).astype(np.int64))


def labelled_split(root: str, split: str, frame_shape: tuple[int, int], layout: LabelLayout) -> list[LabelledVideo]:
    """The split's videos as training lists them (``train/``/``test/``, or the root's fixed random split) with
    their label files; a missing label folder or file is a one-line error naming it."""
    from modules.data.dataset import FramesDataset

    dataset = FramesDataset(root, frame_shape, is_train=split == "train")
    folder = os.path.normpath(os.path.join(layout.folder, os.path.relpath(dataset.folder, root)))
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: label folder not found (the {split} split's labels, one <video>.npy per video; "
                        f"scripts/label_keypoints.py writes them)")
    videos = []
    for index, name in enumerate(dataset.names):
        path = os.path.join(folder, name + ".npy")
        if not os.path.isfile(path):
            raise UserError(f"{path}: keypoint labels not found (every video of {dataset.folder} needs one)")
        labels = read_labels(path, dataset.num_frames(index))
        if max(layout.columns) >= labels.shape[1]:
            raise UserError(f"{path}: {labels.shape[1]} points per frame, but label_params.points needs "
                            f"column {max(layout.columns)} of points.json")
        videos.append(LabelledVideo(name, dataset.video(index), dataset._stored_size(index), labels))
    return videos


def mean_pose(videos: list[LabelledVideo], layout: LabelLayout, frame_shape: tuple[int, int],
              points: list[str]) -> np.ndarray:
    """(K, 2) each point's mean over the visible labels of ``videos``, in the training targets' [-1, 1]
    coordinates; a point never visible sits at the frame's centre (with a warning)."""
    total, count = np.zeros((len(points), 2)), np.zeros(len(points))
    for item in videos:
        value, visible = labels_to_normalized(item.labels, layout, item.stored_size, frame_shape)
        total += (value * visible[..., None]).sum(axis=0)
        count += visible.sum(axis=0)
    never = [name for name, seen in zip(points, count) if seen == 0]
    if never:
        print(f"warning: no visible train label of {', '.join(never)}: the mean pose puts it at the frame's "
              f"centre", file=sys.stderr)
    return total / np.maximum(count, 1)[:, None]


def video_errors(detector: Any, item: LabelledVideo, layout: LabelLayout, frame_shape: tuple[int, int],
                 pose: np.ndarray, wanted: Optional[int], bar: Any) -> dict:
    """One video: its measured frames, visible labels and the mean distance in stored pixels of the detector's
    keypoints and of the mean pose to the visible labels (None without any)."""
    indices = chosen_frames(item.video.num_frames, wanted)
    rows = np.asarray(item.labels[indices], np.float64)
    _, visible = labels_to_normalized(rows, layout, item.stored_size, frame_shape)
    visible = visible > 0
    labels = np.nan_to_num(rows[:, list(layout.columns), :2])          # pixels of the stored frames
    found = []
    for start in range(0, len(indices), BATCH):
        chunk = indices[start:start + BATCH]
        found.append(detector_values(detector, item.video.read(chunk)))
        bar.update(len(chunk))
    keypoints = to_stored_pixels(np.concatenate(found), item.stored_size, frame_shape)
    baseline = to_stored_pixels(pose, item.stored_size, frame_shape)[None]
    count = int(visible.sum())

    def mean_distance(predicted: np.ndarray) -> Optional[float]:
        distances = np.linalg.norm(predicted - labels, axis=-1)
        return float(distances[visible].mean()) if count else None

    return {"name": item.name, "frames": len(indices), "visible": count,
            "detector_px": mean_distance(keypoints), "mean_pose_px": mean_distance(baseline)}


def overall(rows: list[dict]) -> dict:
    """The videos' figures weighted by their visible labels, and the detector's error as a share of the mean
    pose's (None where undefined)."""
    visible = sum(row["visible"] for row in rows)

    def weighted(key: str) -> Optional[float]:
        return sum(row[key] * row["visible"] for row in rows if row["visible"]) / visible if visible else None

    detector, pose = weighted("detector_px"), weighted("mean_pose_px")
    return {"videos": len(rows), "frames": sum(row["frames"] for row in rows), "visible": visible,
            "detector_px": detector, "mean_pose_px": pose,
            "ratio": detector / pose if detector is not None and pose else None}


def open_labels(config: Any, source: str, data: Optional[str]) -> tuple[str, Any, LabelLayout]:
    """(dataset root, label_params, resolved label layout) of ``config``, ``data`` replacing its root."""
    labels = getattr(config.model_params, "label_params", None)
    if labels is None:
        raise UserError(f"{source}: no model_params.label_params in its config (a {config.motion_name}); pass "
                        f"--config with a family: detector config naming the labelled points")
    root = data if data is not None else config.dataset_params.root_dir
    if not os.path.isdir(root):
        named = "--data" if data is not None else "dataset_params.root_dir; --data ROOT replaces it"
        raise UserError(f"{root}: dataset folder not found ({named})")
    if not os.path.isdir(os.path.join(root, labels.folder)):
        raise UserError(f"{os.path.join(root, labels.folder)}: label folder not found (model_params.label_params."
                        f"folder {labels.folder!r}; scripts/label_keypoints.py writes it)")
    return root, labels, label_layout(root, labels, needs_mirror=False)


def measure(checkpoint: str, config_path: Optional[str] = None, data: Optional[str] = None, split: str = "test",
            frames: Optional[int] = None, device: str = "auto", progress: bool = True) -> dict:
    """Run the detector of ``checkpoint`` over ``split`` and compare it with the labels (module docstring)."""
    from tqdm import tqdm

    from modules.core.device import choose_device

    target = choose_device(device)          # a bad --device fails before anything is read
    config, detector, loaded = load_detector(checkpoint, config_path)
    root, labels, layout = open_labels(config, loaded["path"], data)
    frame_shape = config.dataset_params.size
    videos = labelled_split(root, split, frame_shape, layout)
    pose = mean_pose(videos if split == "train" else labelled_split(root, "train", frame_shape, layout),
                     layout, frame_shape, list(labels.points))
    detector.to(target)
    total = sum(len(chosen_frames(item.video.num_frames, frames)) for item in videos)
    with tqdm(total=total, unit="frame", desc=f"{split} videos", disable=not progress, dynamic_ncols=True) as bar:
        rows = [video_errors(detector, item, layout, frame_shape, pose, frames, bar) for item in videos]
    return {"checkpoint": loaded["path"], "data": root, "split": split, "points": list(labels.points),
            "min_visibility": layout.min_visibility, "frames_per_video": frames, "frame_shape": list(frame_shape),
            "videos": rows, "overall": overall(rows)}


def _number(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(result: dict) -> str:
    """The table (one line per video, then the overall line) and the summary line."""
    rows, total = result["videos"], result["overall"]
    width = max([len("overall")] + [len(row["name"]) for row in rows])
    lines = [f"{result['checkpoint']}: {len(result['points'])} points, {result['split']} split of {result['data']}, "
             f"errors in pixels of the stored frames",
             f"{'video':<{width}}  {'frames':>7}  {'visible':>8}  {'detector px':>11}  {'mean pose px':>12}"]
    for row in rows + [dict(total, name="overall")]:
        lines.append(f"{row['name']:<{width}}  {row['frames']:>7}  {row['visible']:>8}  "
                     f"{_number(row['detector_px']):>11}  {_number(row['mean_pose_px']):>12}")
    lines.append(f"detector {_number(total['detector_px'])} px, mean pose {_number(total['mean_pose_px'])} px "
                 f"({_number(total['ratio'])} of the baseline) over {total['videos']} videos, {total['frames']} frames")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from run import positive_int

    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a detector checkpoint, its run folder, or a model file")
    parser.add_argument("--config", help="a config replacing the checkpoint's (it must name label_params)")
    parser.add_argument("--data", help="the dataset folder, replacing the config's dataset_params.root_dir")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--frames", type=positive_int, help="evenly spaced frames per video (default: all)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)

    def command() -> None:
        # checked before the detector runs, not after: a long measurement is not lost to a bad --out
        if args.out is not None and (os.path.isdir(args.out) or not os.path.isdir(os.path.dirname(
                os.path.abspath(args.out)))):
            raise UserError(f"--out {args.out}: expected a JSON file name in an existing folder")
        result = measure(args.checkpoint, args.config, args.data, args.split, args.frames, args.device)
        print(report(result))
        if args.out is not None:
            write_json(args.out, result)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
