"""Live latency: a recorded clip fed at its own frame rate through ``--mode live``'s path, for each shipped model.

    python benchmarks/live_latency.py [--seconds 12] [--engine auto] [--models faces-heatmap tiny-heatmap ...]

Each shipped model that animates (models/*.pth.tar) runs at its own size on the clip that suits it: the bundled
real-face pair (examples/faces) for the face models, the synthetic demo pair for the others. The clip, looped
to ``--seconds``, is played like a camera (each frame no sooner than its time) by the command line's reader
thread into the one-slot buffer, and the model animates the newest frame each time it is free, with the
command line's defaults (--crop auto on the reference frame, paste back); only the writing of the result is
left out. Latency is frame in (whole in the buffer) to frame out (animated and pasted back). The reference
frame (the clip's first) goes alone first: its --crop auto search is a one-off, reported beside the figures.

Prints a line naming the CPU (model name, flags, cores, load average: a shared machine is slower), then one
line per model: ``MODEL SIZE: median N ms, p95 N ms, N fps, D dropped`` (then the frames fed and the
reference frame's time).
"""
import argparse
import contextlib
import glob
import itertools
import os
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_line() -> str:
    """The CPU's model name, the flags that decide the kernels, the cores, and how busy the machine is."""
    from modules.core.precision import cpu_flags
    from modules.inference.engines import cpu_name

    flags = set(cpu_flags())
    shown = " ".join(flag for flag in FLAGS if flag in flags) or "none of " + "/".join(FLAGS)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"CPU: {cpu_name()}; flags: {shown}; {os.cpu_count()} cores; load average {load}"


def shipped_models(names) -> list[str]:
    from modules.app.files import describe_model

    paths = sorted(glob.glob(os.path.join(ROOT, "models", "*.pth.tar")))
    paths = [path for path in paths if not describe_model(path).problem]          # animating models only
    if names:
        paths = [path for path in paths if os.path.basename(path).split(".")[0] in names]
    return paths


def pair_for(path: str, folder: str) -> tuple[str, str]:
    """The source image and driving clip that suit the model: real faces for a face model, else synthetic."""
    from modules.app.files import FACE_EXAMPLE, describe_model
    from modules.app.page import write_example

    if describe_model(path).face and all(os.path.isfile(file) for file in FACE_EXAMPLE):
        return FACE_EXAMPLE
    return write_example(folder)


def measure(path: str, source: str, driving: str, seconds: float, engine: str) -> str:
    import torch

    from modules.data.video_io import load_image, open_video
    from modules.inference.live import LatestFrame, LiveAnimator, LiveSettings
    from modules.inference.live_run import feed, paced
    from modules.inference.pipeline import prepare_model

    device = torch.device("cpu")
    video = open_video(driving)
    frames = video.read_all()
    count = max(len(frames), round(seconds * video.fps))
    with contextlib.redirect_stdout(sys.stderr):              # the engine line: the figures alone on stdout
        prepared = prepare_model(path, device, engine=engine)
    animator = LiveAnimator(prepared, load_image(source), source, LiveSettings(rate=video.fps), device)
    animator.warm_up()
    slot, stop = LatestFrame(), threading.Event()
    worker = threading.Thread(target=animator.run, args=(slot, lambda frame, arrival: None, stop))
    worker.start()
    # The reference frame first, alone: --crop auto's search in it is a one-off per reference, reported
    # beside the figures rather than mixed into them.
    slot.put(frames[0])
    while animator.stats.animated < 1 and worker.is_alive():
        time.sleep(0.01)
    reference_ms = animator.stats.latencies[0] * 1000
    started = time.perf_counter()
    feed(paced(itertools.islice(itertools.cycle(frames), count), video.fps), slot, stop)
    worker.join()
    slot.discard()
    stats, (height, width) = animator.stats, prepared.config.dataset_params.size
    latencies = np.asarray(list(stats.latencies)[1:]) * 1000
    median, p95 = (np.percentile(latencies, share) for share in (50, 95))
    fps = len(latencies) / (stats.last - started)
    name = os.path.basename(path).split(".")[0]
    return (f"{name} {width}x{height}: median {median:.0f} ms, p95 {p95:.0f} ms, {fps:.1f} fps, {slot.dropped} dropped"
            f"  (of {count} frames at {video.fps:g} fps; reference frame with --crop auto: {reference_ms:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="how long each clip plays (looped)")
    parser.add_argument("--engine", default=os.environ.get("KPMASK_ENGINE", "auto"),
                        help="torch, torch-opt, onnxruntime, openvino or auto (the command line's default)")
    parser.add_argument("--models", nargs="*", default=None, help="model names (default: every shipped model)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # "no face found" in a synthetic frame, ...
        for path in shipped_models(args.models):
            source, driving = pair_for(path, folder)
            print(measure(path, source, driving, args.seconds, args.engine), flush=True)


if __name__ == "__main__":
    main()
