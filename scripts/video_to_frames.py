"""Convert a folder of videos (mp4/mov/gif) into frame folders of PNGs, the cheapest format to train from.

    python scripts/video_to_frames.py data/mydata-mp4 data/mydata --size 256 --workers 2

Why: a training item is two random frames of one video. From a frame folder that is two PNG decodes; from an
mp4 it is an ffmpeg process that seeks and decodes from the previous keyframe, several times slower
(``python benchmarks/data_speed.py`` measures both). Converting once makes every epoch cheaper.

The input is walked recursively and its layout kept: ``IN/train/a.mp4`` becomes ``OUT/train/a/0000000.png``,
``0000001.png``, ... (the folder takes the video's name, so ids and pairs lists still match). ``--size``
resizes frames (antialiased bilinear, the same resize the data loader uses) to H x W. A video whose folder
already exists is skipped, so an interrupted run can be started again: each folder is written under a
``.partial`` name and renamed when complete. Unreadable videos are reported and skipped (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError
from modules.core.outputs import check_output_folder, results_folder  # noqa: E402
from modules.data.video_io import VIDEO_EXTENSIONS, VideoError, open_video  # noqa: E402


def find_videos(input_dir: str) -> list[str]:
    """The mp4/mov/gif files under ``input_dir``, as paths relative to it, sorted."""
    found = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), input_dir) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    return found


class _NoFrames(Exception):
    pass


def convert(source: str, target: str, size: Optional[tuple[int, int]]) -> tuple[int, Optional[str]]:
    """Write ``source``'s frames as ``target/%07d.png`` -> (frames written, error message or None). The folder
    is built beside ``target`` and swapped in when complete: a failed conversion keeps an earlier one."""
    count = 0
    try:
        with results_folder(target) as partial:
            for batch in open_video(source, size).iter_frames(16):
                for frame in batch:
                    Image.fromarray(frame).save(os.path.join(partial, f"{count:07d}.png"))
                    count += 1
            if count == 0:
                raise _NoFrames()
    except VideoError as error:
        return 0, str(error)
    except _NoFrames:
        return 0, f"{source}: no frames decoded"
    return count, None


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", help="folder of videos (searched recursively: train/, test/, ...)")
    parser.add_argument("output_dir", help="where the frame folders go (same sub-folders)")
    parser.add_argument("--size", type=int, nargs="+", metavar="N", default=None,
                        help="resize frames: one number for square frames, or H W")
    parser.add_argument("--workers", type=int, default=1, help="videos converted in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="convert again videos whose folder exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    input_dir, output_dir = args.input_dir, args.output_dir
    if not os.path.exists(input_dir):
        raise UserError(f"{input_dir}: input folder not found")
    if not os.path.isdir(input_dir):
        raise UserError(f"{input_dir}: expected a folder of videos, got a file")
    if args.size is not None and (len(args.size) not in (1, 2) or min(args.size) < 1):
        raise UserError(f"--size {' '.join(map(str, args.size))}: expected one or two positive integers (H W)")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected a positive integer")
    check_output_folder(output_dir, what="output_dir", inputs=(input_dir,))
    size = None if args.size is None else (args.size[0], args.size[-1])
    videos = find_videos(input_dir)
    if not videos:
        raise UserError(f"{input_dir}: no {'/'.join(VIDEO_EXTENSIONS)} files found (searched recursively)")

    jobs, skipped, failures, targets = [], 0, [], {}
    for relative in videos:
        target = os.path.join(output_dir, os.path.splitext(relative)[0])
        if target in targets:         # a.mp4 and a.mov: one folder name, and the dataset would see one name twice
            failures.append(f"{os.path.join(input_dir, relative)}: same name as {targets[target]}, not converted")
            continue
        targets[target] = os.path.join(input_dir, relative)
        if os.path.isdir(target) and not args.overwrite:
            skipped += 1
            continue
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        jobs.append((os.path.join(input_dir, relative), target, size))

    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
    frames, converted = 0, 0
    pool = ProcessPoolExecutor(args.workers) if args.workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.map(convert, *zip(*jobs)) if pool else (convert(*job) for job in jobs)
        for count, error in tqdm(results, total=len(jobs), unit="video", desc="video_to_frames"):
            frames += count
            converted += error is None
            if error:
                failures.append(error)
                tqdm.write(f"skipped {error}", file=sys.stderr)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"{converted} videos converted ({frames} frames) into {output_dir}"
          + (f", {skipped} already there" if skipped else "") + (f", {len(failures)} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
