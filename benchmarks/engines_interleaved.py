"""Engine speed-ups measured in turns: every engine and precision in one process, timed round-robin.

    python benchmarks/engines_interleaved.py [--batch 4] [--rounds 5] [--frames 8] [--settings ...]

On a shared machine whose speed drifts by tens of percent from minute to minute, rows timed one after the
other (benchmarks/animate_speed.py) can differ by more than the engines do. Here each round times every
setting once on the same frames (and this CPU's 3x3 convolution rate once), so a slow minute slows them all;
the table gives each setting's median s/frame, its median speed-up over eager fp32 within a round, the
fraction of the convolution rate it reaches (the PyTorch model's FLOPs per second over the rate measured in
the same rounds) and its PSNR against eager fp32. Taichi-256 heatmap networks with RANDOM weights.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from animate_run import cpu_line  # noqa: E402
from animate_speed import SETTINGS, _model_and_frames, conv_rate, on_setting  # noqa: E402


def prepared(setting: str, size: int, calibration):
    """The model on ``setting``'s engine, and its autocast dtype."""
    import torch

    model, source, _ = _model_and_frames(None, 1, size)
    model = on_setting(model, setting, source, calibration, None, size)
    return model.to(memory_format=torch.channels_last), torch.bfloat16 if setting.endswith("-bf16") else None


def main() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if "bf16" not in s and "fp16" not in s],
                        choices=[s for s in SETTINGS if "fp16" not in s])
    args = parser.parse_args()
    print(cpu_line())
    os.environ["KPMASK_CACHE"] = tempfile.mkdtemp(prefix="engines-interleaved-")
    model, source, frames = _model_and_frames(None, args.frames + 4, args.size)
    driving, calibration = frames[:args.frames], frames[args.frames:]
    layout = torch.channels_last
    source, driving = source.contiguous(memory_format=layout), driving.contiguous(memory_format=layout)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.animate(model.encode_source(source), driving[:1])
    flops = counter.get_total_flops()
    models = {setting: prepared(setting, args.size, calibration) for setting in ["torch"] + args.settings}
    times: dict[str, list[float]] = {name: [] for name in models}
    rates, outputs = [], {}
    with torch.inference_mode():
        states = {name: m.encode_source(source) for name, (m, _) in models.items()}
        for round_index in range(args.rounds + 1):                    # round 0 warms up
            rates.append(conv_rate(3))
            for name, (m, dtype) in models.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    out = [m.animate(states[name], driving[i:i + args.batch]).prediction.float()
                           for i in range(0, args.frames, args.batch)]
                times[name].append((time.perf_counter() - start) / args.frames)
                outputs[name] = torch.cat(out)
    rate = statistics.median(rates[1:])
    print(f"NOTE: RANDOM weights; {args.size}x{args.size}, batch {args.batch}, {args.rounds} rounds of {args.frames} "
          f"frames; this CPU's 3x3 convolution rate {rate:.0f} GFLOP/s (median; {min(rates[1:]):.0f}-"
          f"{max(rates[1:]):.0f}); {torch.get_num_threads()} threads")
    print(f"{'setting':<17} {'s/frame':>8} {'speed-up':>16} {'GFLOP/s':>8} {'of conv rate':>12} {'PSNR vs torch':>13}")
    for name in models:
        runs = times[name][1:]
        ratios = [base / mine for base, mine in zip(times["torch"][1:], runs)]
        seconds = statistics.median(runs)
        mse = (outputs[name] - outputs["torch"]).pow(2).mean().item()
        psnr = "-" if name == "torch" else "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(1 / mse)):.1f} dB"
        spread = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{name:<17} {seconds:>8.3f} {spread:>16} {flops / seconds / 1e9:>8.0f} "
              f"{flops / seconds / 1e9 / rate:>12.0%} {psnr:>13}")


if __name__ == "__main__":
    main()
