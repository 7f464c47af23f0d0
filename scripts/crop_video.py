"""Build a training dataset from raw videos: one square crop per video around its subject, as frame folders.

    python scripts/crop_video.py RAW_DIR OUT_DIR --kind face|body|synthetic [--size 256] [--test_percent 10]
        [--keypoint_regressor PATH] [--min_frames 16]

What ``--mode animate --driving_crop auto`` does to a driving video (modules/inference/crop.py), done offline: the
subject (a face with dlib's landmarks, a body with MediaPipe Pose, a synthetic figure with the keypoint
regressor) is found on up to 64 frames spread over the video, the running-median-steadied union of its boxes
is enlarged the way FOMM's preprocessing enlarged VoxCeleb's and Tai-Chi-HD's (10% on each side), and every
frame is cropped to that one box and resized to ``--size``. Each video becomes ``OUT/train/<name>/`` or
``OUT/test/<name>/``: where RAW_DIR already has ``train/`` and ``test/`` folders holding videos, that split is
kept (every video must then lie in one of them); otherwise ``--test_percent`` of the videos go to test,
chosen by a hash of the name, so a video keeps its split when more are added. Frames are ``0000000.png``, ...
and each video gets a line in ``OUT/crops.csv`` (name, split, box x,y,w,h in the raw video's pixels). A folder
is written under a ``.partial`` name and renamed when complete, and finished videos are skipped: an
interrupted run picks up where it stopped. A video shorter than ``--min_frames`` or with no subject found is
reported and left out (exit status 1). The last line counts the videos per split; a test split left empty
is warned about.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import zlib
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.core.outputs import results_folder  # noqa: E402
from modules.data.video_io import VideoError, open_video, video_name  # noqa: E402
from modules.inference.crop import SHIPPED_REGRESSOR  # noqa: E402
from scripts.video_to_frames import find_videos  # noqa: E402


def split_of(name: str, test_percent: int) -> str:
    """train or test, fixed by the name alone (CRC-32), so adding videos never moves one between splits."""
    return "test" if zlib.crc32(name.encode("utf-8")) % 100 < test_percent else "train"


def top_folder(relative: str) -> str:
    """The first folder of a path relative to RAW_DIR ('' for a video directly in it)."""
    parts = relative.replace(os.sep, "/").split("/")
    return parts[0] if len(parts) > 1 else ""


def assign_splits(videos: list[str], raw_dir: str, test_percent: int) -> tuple[list[tuple[str, str]], bool]:
    """(video, split) for each video (paths relative to ``raw_dir``), and whether the split is RAW's own: its
    train/ and test/ folders where both hold videos, else a hash of the names."""
    tops = [top_folder(relative) for relative in videos]
    if not {"train", "test"} <= set(tops):
        return [(relative, split_of(video_name(os.path.join(raw_dir, relative)), test_percent))
                for relative in videos], False
    outside = [relative for relative, top in zip(videos, tops) if top not in ("train", "test")]
    if outside:
        # Guessing would either train on a video meant for testing or test on one meant for training.
        raise UserError(f"{raw_dir}: {len(outside)} video(s) outside its train/ and test/ folders (e.g. "
                        f"{outside[0]}); expected every video in train/ or test/ (that split is kept), or none "
                        f"there (then --test_percent splits them)")
    return list(zip(videos, tops)), True


def empty_test_warning(counts: dict[str, int], test_percent: int, by_folder: bool) -> Optional[str]:
    """A one-line warning when videos were cropped but none into test/ though one was asked for, else None."""
    if counts["test"] > 0 or counts["train"] == 0 or (test_percent == 0 and not by_folder):
        return None
    if by_folder:
        return ("warning: no video landed in test/: every video of RAW_DIR/test was left out (above); the "
                "dataset has no test split until one of them can be cropped")
    return (f"warning: no video landed in test/ (--test_percent {test_percent} of {counts['train']} videos, "
            f"chosen by a hash of the names), so the dataset has no test split; raise --test_percent, or sort "
            f"the videos into RAW_DIR/train and RAW_DIR/test (that split is then kept)")


def make_finder(kind: str, regressor: str):
    from modules.evaluation.landmarks import MetricsUnavailable
    from modules.inference.crop import finder_for_kind

    try:
        return finder_for_kind(kind, regressor)
    except MetricsUnavailable as reason:
        raise UserError(f"--kind {kind}: {reason}") from None


def crop_one(path: str, folder: str, finder, size: int, min_frames: int):
    """Crop one video into ``folder`` (written whole or not at all); returns its box, or the reason it was left out."""
    from modules.inference.crop import crop_to, video_box_of

    video = open_video(path)
    if video.num_frames < min_frames:
        return f"{video.num_frames} frames, fewer than --min_frames {min_frames}"
    box = video_box_of(finder, video)
    if box is None:
        return f"no {finder.kind} found"
    with results_folder(folder) as partial:
        number = 0
        for frames in video.iter_frames(16):
            for frame in frames:
                Image.fromarray(crop_to(frame, box, (size, size))).save(os.path.join(partial, f"{number:07d}.png"))
                number += 1
    return box


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", help="folder of mp4/mov/gif videos, searched recursively; its train/ and "
                                        "test/ folders, where both hold videos, are kept as the split")
    parser.add_argument("out_dir", help="the dataset: train/<name>/ and test/<name>/ frame folders, crops.csv")
    parser.add_argument("--kind", required=True, choices=("face", "body", "synthetic"),
                        help="the subject to find: a face (dlib), a body (MediaPipe Pose) or a synthetic figure "
                             "(the keypoint regressor)")
    parser.add_argument("--size", type=int, default=256, help="side of the square frames written (default 256)")
    parser.add_argument("--test_percent", type=int, default=10,
                        help="percentage (0-100) of the videos put in test/, chosen by a hash of the name "
                             "(default 10); not used where raw_dir has its own train/ and test/")
    parser.add_argument("--keypoint_regressor", default=SHIPPED_REGRESSOR,
                        help="--kind synthetic: the regressor that finds the figure (default: the shipped one)")
    parser.add_argument("--min_frames", type=int, default=16,
                        help="leave out videos with fewer frames (default 16)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.raw_dir):
        raise UserError(f"{args.raw_dir}: not a folder of videos")
    if args.size < 8 or not 0 <= args.test_percent <= 100:
        raise UserError(f"--size {args.size} / --test_percent {args.test_percent}: expected a size >= 8 and a "
                        f"percentage 0-100")
    return args


def crop_all(args: argparse.Namespace, splits: list[tuple[str, str]], finder) -> tuple[dict[str, int], list[str]]:
    """Crop every (video, split) not done yet into ``args.out_dir``; the videos per split there, and the left out."""
    manifest = os.path.join(args.out_dir, "crops.csv")
    done = set()
    if os.path.isfile(manifest):
        with open(manifest, newline="", encoding="utf-8") as stream:
            done = {(row["name"], row["split"]) for row in csv.DictReader(stream)}
    counts, left_out = {"train": 0, "test": 0}, []
    for relative, split in tqdm(splits, unit="video", dynamic_ncols=True):
        name = video_name(os.path.join(args.raw_dir, relative))
        folder = os.path.join(args.out_dir, split, name)
        if (name, split) in done and os.path.isdir(folder):
            counts[split] += 1
            continue
        try:
            box = crop_one(os.path.join(args.raw_dir, relative), folder, finder, args.size, args.min_frames)
        except VideoError as error:
            box = str(error)
        if isinstance(box, str):
            left_out.append(f"{relative}: {box}")
            continue
        counts[split] += 1
        new = not os.path.isfile(manifest)
        with open(manifest, "a", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(["name", "split", "box"])
            writer.writerow([name, split, str(box)])
    return counts, left_out


def main(argv=None) -> int:
    args = parse_args(argv)
    videos = find_videos(args.raw_dir)
    if not videos:
        raise UserError(f"{args.raw_dir}: no mp4/mov/gif videos in it")
    splits, by_folder = assign_splits(videos, args.raw_dir, args.test_percent)
    finder = make_finder(args.kind, args.keypoint_regressor)
    os.makedirs(args.out_dir, exist_ok=True)
    counts, left_out = crop_all(args, splits, finder)
    for line in left_out:
        print(f"left out {line}", file=sys.stderr)
    warning = empty_test_warning(counts, args.test_percent, by_folder)
    if warning:
        print(warning, file=sys.stderr)
    how = (f"the split of {args.raw_dir}'s train/ and test/ kept" if by_folder
           else f"split by a hash of the names, --test_percent {args.test_percent}")
    print(f"{len(videos) - len(left_out)} of {len(videos)} videos cropped to {args.size}x{args.size} in "
          f"{args.out_dir}: {counts['train']} in train/, {counts['test']} in test/ ({how}), listed in crops.csv")
    return 1 if left_out else 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
