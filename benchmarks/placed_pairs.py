"""Crop and paste-back measured: the synthetic test pairs placed off-centre in photo-sized frames.

    python benchmarks/placed_pairs.py [--checkpoint models/tiny-circles.pth.tar] [--data data/synthetic]
        [--scale 3] [--canvas 288 384] [--pairs 16] [--picture docs/placed.png]

Each test pair's source frame, driving video and ground-truth animation (64 px) are scaled ``--scale`` times
and pasted into ``--canvas``-sized frames (height width) of a smooth random backdrop, the source and the
driver at different random offsets. ``--crop auto --driving_crop auto`` then has to find both figures
(modules/inference/crop.py), animate the crops and paste the result back into the photo. Its L1 against the ground
truth placed the way the source was is compared with the plain model's: the same pair animated on the 64-px
frames themselves and placed the same way. Both are measured over the placed square (outside it both are
the photo's pixels exactly) and over the whole photo. The crops are streamed through the same code as
``run.py --mode animate`` (modules.inference.pipeline.Frames, stream_animation), without a video codec in the way.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from PIL import Image  # noqa: E402

from scripts.crop_picture import draw  # noqa: E402


def backdrop(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A photo-like backdrop: smooth colour blotches plus grain, (H, W, 3) uint8."""
    coarse = rng.uniform(40, 215, (4, 5, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.Resampling.BICUBIC), np.float64)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def place(frames: np.ndarray, canvas: np.ndarray, x: int, y: int, scale: int) -> np.ndarray:
    """(T, 64, 64, 3) -> (T, H, W, 3): each frame resized by ``scale`` and pasted at column x, row y."""
    side = frames.shape[1] * scale
    out = np.repeat(canvas[None], len(frames), axis=0)
    for target, frame in zip(out, frames):
        target[y:y + side, x:x + side] = np.asarray(Image.fromarray(frame).resize((side, side),
                                                                                 Image.Resampling.BILINEAR))
    return out


def read_folder(folder: str) -> np.ndarray:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    return np.stack([np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names])


def write_folder(folder: str, frames: np.ndarray) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{i:05d}.png"))
    return folder


def animate_frames(model, config, frames, batch: int = 8) -> np.ndarray:
    """The model's predictions for an modules.inference.pipeline.Frames (crops planned), (T, h, w, 3) uint8."""
    import torch

    from modules.inference.pipeline import choose_motion, stream_animation

    motion, adapt = choose_motion(config, None, False, "the model")
    strip: list[np.ndarray] = []
    with torch.inference_mode():
        stream_animation(model, frames.source(config), (frames.driving(config, c)
                                                        for c in frames.video.iter_frames(batch)),
                         None, size=config.dataset_params.size, device=torch.device("cpu"), motion=motion,
                         adapt_scale=adapt, progress=_Silent(), strip=strip)
    return np.concatenate(strip)


class _Silent:
    def update(self, count: int) -> None:
        pass


def l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255)


def run_pair(model, config, args, rng, work: str, number: int, source_name: str, driving_name: str) -> dict:
    """One test pair placed, animated with crop and paste-back and plainly; its L1s and what to show."""
    import warnings

    from modules.inference.crop import Box
    from modules.inference.pipeline import Frames

    source = read_folder(os.path.join(args.data, "test", source_name))[:1]
    driving = read_folder(os.path.join(args.data, "test", driving_name))
    truth = read_folder(os.path.join(args.data, "animation-gt", f"{source_name}__{driving_name}"))
    height, width = args.canvas
    side = 64 * args.scale
    (sx, sy), (dx, dy) = [(int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)))
                          for _ in range(2)]
    photo = place(source, backdrop(rng, (height, width)), sx, sy, args.scale)[0]
    photo_path = os.path.join(work, f"{number}-photo.png")
    Image.fromarray(photo).save(photo_path)
    driving_dir = write_folder(os.path.join(work, f"{number}-driving"),
                               place(driving, backdrop(rng, (height, width)), dx, dy, args.scale))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # a figure not found would fail the row
        frames = Frames(photo_path, driving_dir, "crop", "auto", "auto")
        plan = frames.planned(config)
    cropped = animate_frames(model, config, frames)
    pasted = plan.paster(photo, True)(cropped) if plan.source is not None else cropped
    plain_frames = Frames(os.path.join(args.data, "test", source_name, "00000.png"),
                          os.path.join(args.data, "test", driving_name), "crop", "none", "none")
    plain = place(animate_frames(model, config, plain_frames), photo, sx, sy, args.scale)
    placed_truth = place(truth, photo, sx, sy, args.scale)
    count = min(len(pasted), len(placed_truth))
    region = (slice(None), slice(sy, sy + side), slice(sx, sx + side))
    row = {"square": l1(pasted[:count][region], placed_truth[:count][region]),
           "plain_square": l1(plain[:count][region], placed_truth[:count][region]),
           "photo": l1(pasted[:count], placed_truth[:count]), "plain_photo": l1(plain[:count], placed_truth[:count]),
           "shown": [photo, read_folder(driving_dir)[count // 2], pasted[count // 2], placed_truth[count // 2],
                     plan.source]}
    print(f"{source_name}__{driving_name}: box {plan.source} (placed {Box(sx, sy, side)}), driving box "
          f"{plan.driving} (placed {Box(dx, dy, side)}); square L1 {row['square']:.4f} vs plain "
          f"{row['plain_square']:.4f}")
    return row


def main() -> None:
    import torch

    from modules.inference.choice import load_for_inference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "tiny-circles.pth.tar"))
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "synthetic"))
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--canvas", type=int, nargs=2, default=[288, 384])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--picture", default=None, help="write photo | driving | result | truth frames here")
    args = parser.parse_args()
    torch.manual_seed(0)
    config, model, _, _ = load_for_inference(args.checkpoint, torch.device("cpu"), engine="torch")
    with open(os.path.join(args.data, "test-pairs.csv"), newline="") as stream:
        pairs = [(row["source"], row["driving"]) for row in csv.DictReader(stream)][:args.pairs]
    rng = np.random.default_rng(0)
    work = tempfile.mkdtemp(prefix="placed-pairs-")
    rows = [run_pair(model, config, args, rng, work, number, *pair) for number, pair in enumerate(pairs)]
    mean = {key: float(np.mean([row[key] for row in rows])) for key in ("square", "plain_square", "photo",
                                                                        "plain_photo")}
    print(f"\n{len(rows)} pairs, canvas {args.canvas[1]}x{args.canvas[0]}, figure square {64 * args.scale} px "
          f"(scale {args.scale})")
    print(f"{'':<28} {'L1 over the square':>18} {'L1 over the photo':>18}")
    print(f"{'crop auto + paste-back':<28} {mean['square']:18.4f} {mean['photo']:18.4f}")
    print(f"{'plain model (64-px frames)':<28} {mean['plain_square']:18.4f} {mean['plain_photo']:18.4f}")
    print(f"ratio {mean['square'] / mean['plain_square']:.3f} over the square, "
          f"{mean['photo'] / mean['plain_photo']:.3f} over the photo")
    if args.picture:
        write_picture(args.picture, rows[0]["shown"])


def write_picture(path: str, shown: list) -> None:
    """photo (box drawn) | driving frame | result | ground truth, side by side."""
    photo, driving, result, truth, box = shown
    marked = photo.copy()
    if box is not None:
        draw(marked, box, (255, 40, 40), width=2)
    gap = np.full((photo.shape[0], 6, 3), 255, np.uint8)
    strip = np.concatenate([marked, gap, driving, gap, result, gap, truth], axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(strip).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"picture: {path}")


if __name__ == "__main__":
    main()
