"""Whole ``run.py --mode animate`` runs, start-up included: each engine and precision on the same 48 frames.

    python benchmarks/animate_run.py [--size 256] [--frames 48] [--runs torch:no auto:no auto:int8]

Writes a model file of the taichi-256 heatmap networks with RANDOM weights (speed does not depend on them),
a ``--frames``-frame driving video and a source image at ``--size`` px, then times each ``engine:precision``
as a fresh process in a fresh engine cache, twice: the first run pays for what ``auto`` does once per
model file, size and CPU (timing the engines, exporting the graphs; int8 also quantises on its calibration
frames), the second finds it cached. Prints wall-clock seconds, seconds per frame and the speed-up over
``torch:no`` (eager fp32, the reference).
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


def write_inputs(folder: str, size: int, frames: int) -> tuple[str, str]:
    import imageio_ffmpeg

    video, image = os.path.join(folder, "driving.mp4"), os.path.join(folder, "source.png")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--runs", nargs="+", default=["torch:no", "auto:no", "auto:int8"])
    args = parser.parse_args()
    print(f"NOTE: RANDOM weights; {args.frames} frames at {args.size}x{args.size}; start-up, decoding and encoding "
          f"included")
    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, "model.pth.tar")
        write_model(model, args.size)
        image, video = write_inputs(folder, args.size, args.frames)
        reference = None
        print(f"{'run':<11} {'first run':>10} {'later run':>10} {'s/frame':>8} {'speed-up':>8}  engine line")
        for run in args.runs:
            engine, precision = run.split(":")
            cache = tempfile.mkdtemp(dir=folder)
            first, _ = timed_run(model, image, video, engine, precision, cache, os.path.join(folder, "out.mp4"))
            later, line = timed_run(model, image, video, engine, precision, cache, os.path.join(folder, "out.mp4"))
            reference = reference or later
            print(f"{run:<11} {first:>9.1f}s {later:>9.1f}s {later / args.frames:>8.3f} {reference / later:>7.2f}x  "
                  f"{line}", flush=True)


if __name__ == "__main__":
    main()
