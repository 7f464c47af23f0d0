"""Does bf16 autocast train like fp32? The first N steps of the tiny config in both, epoch by epoch.

    python benchmarks/precision_curve.py [--steps 200] [--data data/synthetic]

Trains config/tiny-heatmap.yaml twice through the real training loop (same seed, same data order): fp32
NCHW, then bf16 autocast with channels_last. Prints the per-epoch mean losses of both and their relative
difference. bf16 counts as a speed-up only if the curves stay within 2% of each other. The detector is a
seeded RANDOM one (no trained detector exists yet) and VGG-19 is random too, as in the tiny config.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EPOCH_LINE = re.compile(r"^(\d{8})\) step (\d+);.*?perceptual_low_res - ([\d.]+); perceptual_high_res - ([\d.]+);")


def epoch_losses(run_dir: str) -> list[tuple[int, float, float]]:
    rows = []
    with open(os.path.join(run_dir, "log.txt"), encoding="utf-8") as stream:
        for line in stream:
            match = EPOCH_LINE.match(line)
            if match:
                rows.append((int(match.group(2)), float(match.group(3)), float(match.group(4))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--data", default=None, help="synthetic dataset folder (default: generated in a temp folder)")
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "tiny-heatmap.yaml"))
    args = parser.parse_args()

    import torch
    import yaml

    from modules.config.loading import load_config
    from modules.nets.keypoint_detector import KPDetector
    from train import TrainOptions, run_training

    work = tempfile.mkdtemp(prefix="precision-curve-")
    data = args.data
    if data is None:
        from modules.data.synthetic import generate_dataset

        data = os.path.join(work, "synthetic")
        generate_dataset(data, seed=0)
    with open(args.config, encoding="utf-8") as stream:
        raw = yaml.safe_load(stream)
    raw["dataset_params"]["root_dir"] = data
    raw["train_params"]["num_epochs"] = 10_000          # --steps decides where it stops
    config_file = os.path.join(work, os.path.basename(args.config))
    with open(config_file, "w", encoding="utf-8") as stream:
        yaml.safe_dump(raw, stream)
    config = load_config(config_file)
    torch.manual_seed(1)
    detector = KPDetector(**config.model_params.detector_kwargs())
    kp_path = os.path.join(work, "random-detector.pth.tar")
    torch.save({"kp_detector": detector.state_dict()}, kp_path)
    print("NOTE: random keypoint detector and random VGG-19 (nothing pretrained is available here)")

    curves = {}
    for name, precision, channels_last in (("fp32", "no", False), ("bf16", "bf16", True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_dir = run_training(TrainOptions(
                config=config_file, checkpoint_with_kp=kp_path, log_dir=os.path.join(work, name),
                device=torch.device("cpu"), mixed_precision=precision, channels_last=channels_last,
                max_steps=args.steps))
        curves[name] = epoch_losses(run_dir)
    print(f"{'step':>6} {'fp32 low':>10} {'bf16 low':>10} {'diff':>7} {'fp32 high':>10} {'bf16 high':>10} {'diff':>7}")
    worst = 0.0
    for (step, low32, high32), (_, low16, high16) in zip(curves["fp32"], curves["bf16"]):
        d_low, d_high = abs(low16 - low32) / low32, abs(high16 - high32) / high32
        worst = max(worst, d_low, d_high)
        print(f"{step:>6} {low32:>10.4f} {low16:>10.4f} {d_low:>6.2%} {high32:>10.4f} {high16:>10.4f} {d_high:>6.2%}")
    print(f"largest relative difference of the epoch means: {worst:.2%} "
          f"({'within' if worst <= 0.02 else 'OUTSIDE'} the 2% allowed)")


if __name__ == "__main__":
    main()
