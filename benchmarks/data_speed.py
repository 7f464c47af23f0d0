"""Data loading speed: mp4 seeking against full decoding, and training samples/s per format and frame size.

    python benchmarks/data_speed.py [--videos 20] [--frames 100] [--samples 160]

Everything is generated in a temporary folder: smooth textured frames with a moving blob (so h264 has
realistic work), written as frame folders (PNG) and as mp4 (libx264, imageio's defaults). Part 1 times one
300-frame 256x256 mp4; part 2 iterates a training DataLoader (batch 4, two frames per sample) over
``--videos`` videos of ``--frames`` frames and reports samples/s after the first two batches.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import imageio.v2 as imageio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from modules.config.sections import AugmentationParams, FlipParams, JitterParams  # noqa: E402
from modules.data.dataset import DatasetRepeater, FramesDataset  # noqa: E402
from modules.data.video_io import open_video, probe_video  # noqa: E402

TAICHI_AUGMENTATION = AugmentationParams(FlipParams(True, True), JitterParams(0.1, 0.1, 0.1, 0.1))


def make_frames(seed: int, count: int, size: int) -> np.ndarray:
    """uint8 (count, size, size, 3): a smooth random texture panning, with a bright blob moving across."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((2 * size, size), Image.Resampling.BICUBIC))
    y, x = np.mgrid[:size, :size]
    frames = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        shift = (k * size) // (2 * count)
        frame = texture[:, shift:shift + size].astype(np.float32)
        cy, cx = size / 2 + size / 4 * np.sin(k / 9), size * k / count
        frame += 120 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (size / 10) ** 2))[..., None]
        frames[k] = np.clip(frame, 0, 255)
    return frames


def timed(function, repeats: int = 5) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seeking(folder: str) -> None:
    import imageio_ffmpeg

    path = os.path.join(folder, "seek.mp4")
    imageio.mimwrite(path, list(make_frames(0, 300, 256)), fps=25)
    video = open_video(path)
    rng = np.random.default_rng(0)
    pairs = iter([np.sort(rng.choice(300, 2, replace=False)) for _ in range(100)])

    def imageio_pair():
        reader = imageio.get_reader(path)
        i, j = next(pairs)
        reader.get_data(int(i)), reader.get_data(int(j))
        reader.close()

    print(f"one mp4: 300 frames, 256x256, h264 (keyframes at {video.info.keyframes.tolist()}), "
          f"{os.path.getsize(path) // 1024} KiB")
    rows = [("frame count, stream copy (probe_video)", lambda: probe_video(path)),
            ("frame count, imageio_ffmpeg.count_frames_and_secs", lambda: imageio_ffmpeg.count_frames_and_secs(path)),
            ("read 2 random frames (Video.read, seeking)", lambda: video.read(next(pairs))),
            ("read 2 random frames (imageio v2 get_data)", imageio_pair),
            ("decode all 300 frames (Video.read_all)", video.read_all)]
    for label, function in rows:
        print(f"  {label:<52} {1000 * timed(function, 9):7.1f} ms (median of 9)")


def build(folder: str, videos: int, frames: int, size: int) -> dict[str, str]:
    roots = {}
    for kind in ("folder", "mp4"):
        roots[kind] = os.path.join(folder, f"{kind}-{size}")
        os.makedirs(os.path.join(roots[kind], "train"))
    for v in range(videos):
        clip = make_frames(v + 1, frames, size)
        imageio.mimwrite(os.path.join(roots["mp4"], "train", f"v{v:02d}.mp4"), list(clip), fps=25)
        target = os.path.join(roots["folder"], "train", f"v{v:02d}")
        os.makedirs(target)
        for k, frame in enumerate(clip):
            Image.fromarray(frame).save(os.path.join(target, f"{k:07d}.png"))
    return roots


def samples_per_second(root: str, size: int, workers: int, samples: int, augmentation) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = FramesDataset(root, (size, size), augmentation_params=augmentation)
    dataset = DatasetRepeater(base, -(-samples // len(base)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, shuffle=False)
    count, start = 0, None
    for batch_index, batch in enumerate(loader):
        if batch_index == 2:         # worker start-up and the first decodes are not throughput
            count, start = 0, time.perf_counter()
        count += len(batch["name"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--samples", type=int, default=160, help="samples per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)       # decoding is the subject; keep torch's intra-op threads out of the way
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, torch threads 1\n")
    with tempfile.TemporaryDirectory() as folder:
        seeking(folder)
        print(f"\ntraining DataLoader, batch 4: samples/s ({args.videos} videos x {args.frames} frames, "
              f"{args.samples} samples, timed after the first 2 batches)")
        print(f"  {'format':<8} {'size':>5} {'augmentation':<14} {'workers 0':>10} {'workers 2':>10}")
        for size in (64, 256):
            roots = build(folder, args.videos, args.frames, size)
            variants = [(None, "none")] + ([(TAICHI_AUGMENTATION, "taichi")] if size == 256 else [])
            for kind in ("folder", "mp4"):
                for augmentation, label in variants:
                    rates = [samples_per_second(roots[kind], size, w, args.samples, augmentation) for w in (0, 2)]
                    print(f"  {kind:<8} {size:>5} {label:<14} {rates[0]:>10.1f} {rates[1]:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
