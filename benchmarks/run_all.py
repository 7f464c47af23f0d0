"""Every speed table of docs/speed.md in one command: training and animation, tiny and 256 configs, fp32 and bf16.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda]      # or: make bench

1. Training (benchmarks/train_speed.py): steps/s, samples/s and peak memory of the real optimisation step for
   the tiny keypoint-mask, FOMM and perturbed-masks configs (batch 4) and their taichi-256 networks (batch 1),
   each in fp32 and bf16 autocast, channels_last.
2. Animation at 256x256 (benchmarks/animate_speed.py, random taichi-256 weights): frames/s, GFLOP/s and peak
   memory at batch 1 and 4, fp32 and bf16, plus streaming memory of a 100- and a 2,000-frame video.
3. Animation with the shipped tiny model (models/tiny-heatmap.pth.tar) at its 64x64 frame size.

Each part prints its own table; every setting runs in a fresh process. About 10 minutes on 2 CPU cores
(``--quick``: one timed step per training setting and batch 1 only, about 4 minutes). Compare figures only
between runs on the same machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN_CONFIGS = ("tiny", "tiny-fomm", "tiny-perturbed", "taichi-256", "taichi-256-fomm", "taichi-256-perturbed")
SHIPPED_MODEL = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")


def part(title: str, command: list[str]) -> int:
    """Run one benchmark script, its output straight to the console; returns its exit status."""
    print(f"\n## {title}\n$ {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in command)}",
          flush=True)
    start = time.perf_counter()
    status = subprocess.run(command, cwd=ROOT).returncode
    print(f"({time.perf_counter() - start:.0f} s{'' if status == 0 else f', exit status {status}'})", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and batch sizes")
    parser.add_argument("--device", default="cpu", help="training benchmark device (cpu, cuda)")
    args = parser.parse_args()
    python = sys.executable
    settings = [f"{config}:{precision}:nhwc" for config in TRAIN_CONFIGS for precision in ("fp32", "bf16")]
    batches = ["1"] if args.quick else ["1", "4"]
    failures = 0
    failures += part("Training step", [python, os.path.join(HERE, "train_speed.py"), "--settings", *settings,
                                       "--steps", "1" if args.quick else "3", "--device", args.device]) != 0
    failures += part("Animation, taichi-256 networks (random weights)",
                     [python, os.path.join(HERE, "animate_speed.py"), "--batches", *batches,
                      "--frames", "8" if args.quick else "16"]) != 0
    if os.path.isfile(SHIPPED_MODEL):
        failures += part("Animation, the shipped tiny model (64x64)",
                         [python, os.path.join(HERE, "animate_speed.py"), "--checkpoint", SHIPPED_MODEL,
                          "--batches", *batches, "--frames", "32", "--skip_streaming"]) != 0
    else:
        print(f"\n(no {os.path.relpath(SHIPPED_MODEL, ROOT)}: the shipped-model animation table is skipped)")
    print(f"\n{failures} part(s) failed" if failures else "\nall parts done")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
