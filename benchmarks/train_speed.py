"""Training speed: steps/s, samples/s and peak memory of the real optimisation step, as a table.

    python benchmarks/train_speed.py                    # the default table (several minutes on 2 cores)
    python benchmarks/train_speed.py --settings tiny:fp32:nchw taichi-256:bf16:nhwc --steps 5

Each setting runs in a fresh process (peak memory is a per-process high-water mark): build the networks
with random weights, run warm-up steps, then time ``--steps`` steps of the family's ``training_step`` (what
train.py runs) plus the Adam updates on random frames (data loading is measured apart, by
benchmarks/data_speed.py). Settings are ``config:precision:layout`` with config one of tiny
(config/tiny-heatmap.yaml, batch 4), tiny-fomm (config/tiny-fomm.yaml, batch 4), taichi-256 (the paper's
networks, batch 1), taichi-128 (the same networks on 128x128 frames, batch 2), taichi-256-fomm (FOMM's,
batch 1), tiny-perturbed and taichi-256-perturbed (the perturbed-masks model, batch 4 and 1), precision fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler, CUDA only), layout nchw or nhwc
(channels_last).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {  # name -> (config file, frame size or None for the config's, batch size)
    "tiny": ("config/tiny-heatmap.yaml", None, 4),
    "taichi-256": ("config/taichi-256-heatmap.yaml", None, 1),
    "taichi-128": ("config/taichi-256-heatmap.yaml", 128, 2),
    "tiny-fomm": ("config/tiny-fomm.yaml", None, 4),
    "taichi-256-fomm": ("config/taichi-256-fomm.yaml", None, 1),
    "tiny-perturbed": ("config/tiny-perturbed.yaml", None, 4),
    "taichi-256-perturbed": ("config/taichi-256-perturbed.yaml", None, 1),
}
DEFAULT_SETTINGS = [f"{c}:{p}:{l}" for c in CONFIGS for p in ("fp32", "bf16") for l in ("nchw", "nhwc")]


def measure(setting: str, steps: int, warmup: int, device_name: str) -> dict:
    """Time one setting in this process."""
    import torch

    from modules.config.loading import config_from_dict, load_config
    from modules.families.build import build_model, build_trainable
    from modules.training.summary import peak_memory_mib
    from train import step_context

    name, precision, layout = setting.split(":")
    file, size, batch = CONFIGS[name]
    config = load_config(os.path.join(ROOT, file))
    if size is not None:
        data = config.to_dict()
        data["dataset_params"]["frame_shape"] = [size, size, 3]
        config = config_from_dict(data, f"{file} at {size}px")
    device = torch.device(device_name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # random detector and VGG: speed does not depend on weights
        trainable = build_trainable(config, build_model(config), vgg_weights="random")
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    trainable.to(device, memory_format=memory_format).train()
    networks = trainable.networks()
    optimizers = [torch.optim.Adam(networks[name].parameters(), lr=2e-4, betas=(0.5, 0.999))
                  for name in trainable.optimized()]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")      # fp16: CUDA only, as in train.py
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    context = step_context(device, dtype, scaler)
    height, width = config.dataset_params.size
    source = torch.rand(batch, 3, height, width, device=device).contiguous(memory_format=memory_format)
    driving = torch.rand(batch, 3, height, width, device=device).contiguous(memory_format=memory_format)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses = trainable.training_step(source, driving, context).losses
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        float(sum(losses.values()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    seconds = statistics.median(times)
    return {"setting": setting, "batch": batch, "size": height, "seconds": seconds, "steps_per_s": 1 / seconds,
            "samples_per_s": batch / seconds, "peak_mib": peak_memory_mib(device),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)     # internal: measure one setting, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.warmup, args.device)))
        return
    for setting in args.settings:
        parts = setting.split(":")
        if len(parts) != 3 or parts[0] not in CONFIGS or parts[1] not in ("fp32", "bf16", "fp16") or \
                parts[2] not in ("nchw", "nhwc"):
            sys.exit(f"error: --settings {setting!r}: expected config:precision:layout with config in "
                     f"{', '.join(CONFIGS)}, precision fp32|bf16|fp16 (fp16: CUDA), layout nchw|nhwc")
    print(f"{'setting':<24} {'batch':>5} {'px':>4} {'s/step':>8} {'steps/s':>8} {'samples/s':>10} {'peak MiB':>9}")
    rows = []
    for setting in args.settings:
        result = subprocess.run([sys.executable, __file__, "--one", setting, "--steps", str(args.steps),
                                 "--warmup", str(args.warmup), "--device", args.device],
                                capture_output=True, text=True)
        if result.returncode:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            print(f"{setting:<24} failed: {lines[-1]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{setting:<24} {row['batch']:>5} {row['size']:>4} {row['seconds']:>8.3f} {row['steps_per_s']:>8.3f} "
              f"{row['samples_per_s']:>10.2f} {row['peak_mib']:>9.0f}", flush=True)
    if rows:
        print(f"(median of {args.steps} steps after {args.warmup} warm-up, {rows[0]['threads']} threads, device "
              f"{args.device}; random weights; Adam update included, data loading excluded)")


if __name__ == "__main__":
    main()
