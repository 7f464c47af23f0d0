"""Build a training dataset from raw videos: one square crop per video around its subject, as frame folders.

    python scripts/crop_video.py RAW_DIR OUT_DIR --kind face|body|synthetic [--size 256] [--test_percent 10]
        [--keypoint_regressor PATH] [--min_frames 16]

What ``--mode animate --driving_crop auto`` does to a driving video (modules/crop.py), done offline: the
subject (a face with dlib's landmarks, a body with MediaPipe Pose, a synthetic figure with the keypoint
regressor) is found on up to 64 frames spread over the video, the running-median-steadied union of its boxes
is enlarged the way FOMM's preprocessing enlarged VoxCeleb's and Tai-Chi-HD's (10% on each side), and every
frame is cropped to that one box and resized to ``--size``. Each video becomes ``OUT/train/<name>/`` or
``OUT/test/<name>/`` (``--test_percent`` of the videos, chosen by a hash of the name, so a video keeps its
split when more are added), with frames ``0000000.png``, ... and a line in ``OUT/crops.csv`` (name, split,
box x,y,w,h in the raw video's pixels). A folder is written under a ``.partial`` name and renamed when
complete, and finished videos are skipped: an interrupted run picks up where it stopped. A video shorter
than ``--min_frames`` or with no subject found is reported and left out (exit status 1).
"""
from __future__ import annotations

import csv
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from modules.crop import SHIPPED_REGRESSOR  # noqa: E402
from modules.errors import OneLineArgumentParser, UserError, exit_status  # noqa: E402
from modules.outputs import results_folder  # noqa: E402
from modules.video_io import VideoError, open_video  # noqa: E402
from scripts.video_to_frames import find_videos  # noqa: E402


def split_of(name: str, test_percent: int) -> str:
    """train or test, fixed by the name alone (CRC-32), so adding videos never moves one between splits."""
    return "test" if zlib.crc32(name.encode("utf-8")) % 100 < test_percent else "train"


def make_finder(kind: str, regressor: str):
    from modules.crop import finder_for_kind
    from modules.landmarks import MetricsUnavailable

    try:
        return finder_for_kind(kind, regressor)
    except MetricsUnavailable as reason:
        raise UserError(f"--kind {kind}: {reason}") from None


def crop_one(path: str, folder: str, finder, size: int, min_frames: int):
    """Crop one video into ``folder`` (written whole or not at all); returns its box, or the reason it was left out."""
    from modules.crop import crop_to, video_box_of

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


def main(argv=None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--kind", required=True, choices=("face", "body", "synthetic"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--test_percent", type=int, default=10)
    parser.add_argument("--keypoint_regressor", default=SHIPPED_REGRESSOR)
    parser.add_argument("--min_frames", type=int, default=16)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.raw_dir):
        raise UserError(f"{args.raw_dir}: not a folder of videos")
    if args.size < 8 or not 0 <= args.test_percent <= 100:
        raise UserError(f"--size {args.size} / --test_percent {args.test_percent}: expected a size >= 8 and a "
                        f"percentage 0-100")
    videos = find_videos(args.raw_dir)
    if not videos:
        raise UserError(f"{args.raw_dir}: no mp4/mov/gif videos in it")
    finder = make_finder(args.kind, args.keypoint_regressor)
    os.makedirs(args.out_dir, exist_ok=True)
    manifest = os.path.join(args.out_dir, "crops.csv")
    done = set()
    if os.path.isfile(manifest):
        with open(manifest, newline="", encoding="utf-8") as stream:
            done = {row["name"] for row in csv.DictReader(stream)}
    left_out = []
    for relative in tqdm(videos, unit="video", dynamic_ncols=True):
        name = os.path.splitext(os.path.basename(relative))[0]
        split = split_of(name, args.test_percent)
        folder = os.path.join(args.out_dir, split, name)
        if name in done and os.path.isdir(folder):
            continue
        try:
            box = crop_one(os.path.join(args.raw_dir, relative), folder, finder, args.size, args.min_frames)
        except VideoError as error:
            box = str(error)
        if isinstance(box, str):
            left_out.append(f"{relative}: {box}")
            continue
        new = not os.path.isfile(manifest)
        with open(manifest, "a", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(["name", "split", "box"])
            writer.writerow([name, split, str(box)])
    for line in left_out:
        print(f"left out {line}", file=sys.stderr)
    print(f"{len(videos) - len(left_out)} of {len(videos)} videos cropped to {args.size}x{args.size} in "
          f"{args.out_dir} (train/, test/, crops.csv)")
    return 1 if left_out else 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
