"""Whole ``run.py --mode animate`` runs, start-up included, the way start-up cancels out.

    python benchmarks/animate_run.py [--size 256] [--frames 48] [--runs torch:no auto:auto auto:int8]

Writes a model file of the taichi-256 heatmap networks with RANDOM weights (speed does not depend on them),
a ``--frames``-frame and a twice as long driving video and a source image at ``--size`` px, then runs each
``engine:precision`` as a fresh process: first on the short clip in a fresh engine cache (it pays for what
auto does once per model file, size and CPU: exporting, racing, for int8 quantising), then on the short and
the long clip with the cache filled. Per frame: (long - short) / frames of the cached runs; first-run overhead:
first - cached on the short clip; PSNR of the short clip's result against the first setting's (eager fp32).
Prints the CPU's name and flags first: name the CPU kind beside every figure.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_model(path: str, size: int) -> None:
    """A model file (the project's own format) of the taichi-256 heatmap networks at ``size`` px, random weights."""
    import torch

    from modules.config.formats import model_file
    from modules.config.loading import config_from_dict, load_config
    from modules.core.files import atomic_save
    from modules.families.build import build_model, build_trainable

    data = load_config(os.path.join(ROOT, "config", "taichi-256-heatmap.yaml")).to_dict()
    data["dataset_params"]["frame_shape"] = [size, size, 3]
    config = config_from_dict(data, "taichi-256-heatmap.yaml")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        networks = build_trainable(config, build_model(config), vgg_weights="random").networks()
    names = config.record.inference_networks
    checkpoint = {name: networks[name].state_dict() for name in names} | {"config": data, "step": 0, "epoch": 0}
    atomic_save(model_file(checkpoint, names, {"note": "RANDOM weights: benchmarks/animate_run.py"}), path)


def write_inputs(folder: str, size: int, frames: int, name: str = "driving.mp4") -> tuple[str, str]:
    import imageio_ffmpeg

    video, image = os.path.join(folder, name), os.path.join(folder, "source.png")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = f"testsrc2=size={size}x{size}:rate=25"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, "-frames:v", str(frames),
                    "-pix_fmt", "yuv420p", video], check=True)
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, "-ss", "1", "-frames:v", "1",
                    image], check=True)
    return image, video


def timed_run(model: str, image: str, video: str, engine: str, precision: str, cache: str, out: str) -> tuple[float, str]:
    """(wall seconds, the engine line it printed)."""
    command = [sys.executable, os.path.join(ROOT, "run.py"), "--mode", "animate", "--device", "cpu", "--checkpoint",
               model, "--source_image", image, "--driving_video", video, "--result_video", out, "--overwrite",
               "--engine", engine, "--mixed_precision", precision]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True,
                            env=dict(os.environ, KPMASK_CACHE=cache, PYTHONWARNINGS="ignore"))
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{engine}:{precision} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    line = next((text for text in result.stdout.splitlines() if "engine:" in text and "measuring" not in text), "")
    return seconds, line[line.find("engine:"):]


def cpu_line() -> str:
    """The CPU's name and the flags that decide the engines' speed (AVX2, AVX-512, bf16, AMX, VNNI)."""
    from modules.core.precision import cpu_flags
    from modules.inference.engines import cpu_name

    shown = [flag for flag in cpu_flags() if flag.startswith(("avx", "amx", "fma")) or "vnni" in flag or "bf16" in flag]
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores; flags: {' '.join(shown) or '-'}"


def psnr(reference: str, candidate: str) -> float:
    import imageio.v3 as iio
    import numpy as np

    a, b = (np.stack(list(iio.imiter(path))).astype(np.float64) / 255 for path in (reference, candidate))
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--runs", nargs="+", default=["torch:no", "auto:auto", "auto:int8"])
    args = parser.parse_args()
    print(cpu_line())
    print(f"NOTE: RANDOM weights; {args.frames} and {2 * args.frames} frames at {args.size}x{args.size}; start-up, "
          f"decoding and encoding included")
    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, "model.pth.tar")
        write_model(model, args.size)
        image, short = write_inputs(folder, args.size, args.frames)
        _, long = write_inputs(folder, args.size, 2 * args.frames, "long.mp4")
        reference = None
        print(f"{'run':<11} {'first':>7} {'cached':>7} {'long':>7} {'s/frame':>8} {'speed-up':>8} {'overhead':>8} "
              f"{'PSNR':>6}  engine line")
        for run in args.runs:
            engine, precision = run.split(":")
            cache, out = tempfile.mkdtemp(dir=folder), os.path.join(folder, run.replace(":", "-") + ".mp4")
            first, _ = timed_run(model, image, short, engine, precision, cache, out)
            cached, line = timed_run(model, image, short, engine, precision, cache, out)
            longer, _ = timed_run(model, image, long, engine, precision, cache, os.path.join(folder, "long-out.mp4"))
            per_frame = (longer - cached) / args.frames
            reference = reference or (per_frame, out)
            quality = "-" if out == reference[1] else f"{psnr(reference[1], out):.1f}"
            print(f"{run:<11} {first:>6.1f}s {cached:>6.1f}s {longer:>6.1f}s {per_frame:>8.3f} "
                  f"{reference[0] / per_frame:>7.2f}x {first - cached:>7.1f}s {quality:>6}  {line}", flush=True)


if __name__ == "__main__":
    main()
