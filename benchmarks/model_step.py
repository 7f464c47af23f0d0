"""Parameters, forward and forward+backward time, and peak memory of one config's model.

    python benchmarks/model_step.py --config config/taichi-256-heatmap.yaml --batch_size 1 --repeats 3

Each repeat runs in this process after a warm-up step; the table gives the median. Peak memory on CPU is
the process's peak resident set (everything: Python, torch, VGG-19, activations); on CUDA, the peak
allocated by torch. VGG-19 has random weights here (the timing does not depend on them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from modules.config.loading import load_config  # noqa: E402
from modules.families.build import build_model, build_trainable  # noqa: E402
from modules.training.summary import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/taichi-256-heatmap.yaml")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = load_config(args.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainable = build_trainable(config, build_model(config), vgg_weights="random")
    device = torch.device(args.device)
    summarize(trainable, config.dataset_params.size, device, args.batch_size)          # warm-up
    runs = [summarize(trainable, config.dataset_params.size, device, args.batch_size) for _ in range(args.repeats)]
    print(f"config {args.config}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")
    for name, count in runs[0].parameters.items():
        print(f"  {name:<34} {count / 1e6:7.2f} M parameters")
    print(f"  forward                {statistics.median(r.forward_s for r in runs):7.3f} s (median of {args.repeats})")
    print(f"  forward+backward       {statistics.median(r.forward_backward_s for r in runs):7.3f} s "
          f"(the family's training losses)")
    print(f"  peak memory            {max(r.peak_memory_mib for r in runs):7.0f} MiB")


if __name__ == "__main__":
    main()
