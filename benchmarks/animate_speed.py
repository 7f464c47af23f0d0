"""Animation speed: frames/s, achieved GFLOP/s and peak memory of 256x256 animation, plus streaming memory.

    python benchmarks/animate_speed.py [--checkpoint CKPT] [--batches 1 2 4 8] [--frames 16]

Part 1 times ``model.animate`` (driving mask + both generators, the source encoded once) for each batch size,
in fp32 and bf16 autocast, channels_last, each setting in a fresh process (peak memory is a per-process
high-water mark), and gives the PSNR of the bf16 output against the fp32 output on the same frames. Without
--checkpoint: the taichi-256 networks with RANDOM weights on noise frames (speed is representative, the PSNR
says little about a trained model, and the output says so). With --checkpoint: its weights at its frame size,
driven by its dataset's test frames when they are on disk. Part 2 animates a 100-frame and a 2,000-frame driving video with a
tiny checkpoint through the real ``run.py --mode animate`` path and compares their peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _model_and_frames(checkpoint: str | None, frames: int):
    """(model in eval mode, source (1, 3, H, W), driving (frames, 3, H, W)). With a checkpoint: its weights, its
    frame size and, when its dataset is on disk, real test frames (the first test video's frame 0 drives
    nothing; the driving frames come from the next videos). Otherwise taichi-256 with random weights and noise."""
    import torch

    from modules.config import load_config
    from modules.models import build_model

    generator = torch.Generator().manual_seed(1)
    if checkpoint:
        from frames_dataset import FramesDataset, frames_to_tensor
        from modules.checkpoint import load_model

        config, model, _ = load_model(checkpoint, torch.device("cpu"))
        height, width = config.dataset_params.size
        try:
            dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
        except Exception:                                  # no dataset here: noise of the right size
            dataset = None
        if dataset is not None and len(dataset) >= 2:
            source = frames_to_tensor(dataset.video(0).read([0]))
            driving, index = [], 0
            while sum(map(len, driving)) < frames:              # videos 1, 2, ..., cycling past the source's
                driving.append(frames_to_tensor(dataset.video(1 + index % (len(dataset) - 1)).read_all()))
                index += 1
            return model, source, torch.cat(driving)[:frames]
    else:
        height = width = 256
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = build_model(load_config(os.path.join(ROOT, "config", "taichi-256-heatmap.yaml"))).eval()
    return (model, torch.rand(1, 3, height, width, generator=generator),
            torch.rand(frames, 3, height, width, generator=generator))


def _config_of(checkpoint: str | None):
    from modules.config import config_from_dict, load_config

    if checkpoint is None:
        return load_config(os.path.join(ROOT, "config", "taichi-256-heatmap.yaml"))
    from modules.checkpoint import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    return config_from_dict(read_checkpoint(path)["config"], path)


def measure(precision: str, batch: int, frames: int, checkpoint: str | None) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modules.summary import peak_memory_mib

    model, source, driving = _model_and_frames(checkpoint, frames)
    model = model.to(memory_format=torch.channels_last)
    source = source.contiguous(memory_format=torch.channels_last)
    driving = driving.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run(chunk: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return model.animate(state, chunk).prediction.float()

    with torch.inference_mode():
        state = model.encode_source(source)
        with FlopCounterMode(display=False) as counter:
            run(driving[:1])
        flops_per_frame = counter.get_total_flops()         # of the PyTorch model, whatever runs it below
        if precision == "onnxruntime":          # the exported parts in ONNX Runtime, fp32 (a fresh cache)
            from modules import engines

            config = _config_of(checkpoint)
            os.environ["KPMASK_CACHE"] = tempfile.mkdtemp(prefix="animate-speed-")
            engines.use_onnxruntime(model, config.record.export_parts(config.model_params),
                                    tuple(source.shape[-2:]), "benchmark")
            state = model.encode_source(source)
        run(driving[:batch])                                   # warm-up
        start = time.perf_counter()
        outputs = [run(driving[i:i + batch]) for i in range(0, frames, batch)]
        seconds = time.perf_counter() - start
    output_path = os.path.join(tempfile.gettempdir(), f"animate-speed-{precision}-{batch}.pt")
    torch.save(torch.cat(outputs), output_path)
    return {"precision": precision, "batch": batch, "frames_per_s": frames / seconds,
            "seconds_per_frame": seconds / frames, "gflops": flops_per_frame * frames / seconds / 1e9,
            "gflop_per_frame": flops_per_frame / 1e9, "peak_mib": peak_memory_mib(torch.device("cpu")),
            "size": list(driving.shape[-2:]),
            "output": output_path}


def _psnr(reference_path: str | None, candidate_path: str) -> str:
    """PSNR (dB) of one setting's output frames against the fp32 eager output on the same frames."""
    import torch

    if reference_path is None:
        return "-"
    mse = (torch.load(reference_path) - torch.load(candidate_path)).pow(2).mean().item()
    return "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(1 / mse)).item():.1f} dB"


def streaming_memory(frames: int, checkpoint: str, folder: str) -> float:
    """Peak RSS (MiB) of run.py --mode animate on a generated ``frames``-frame mp4."""
    import imageio_ffmpeg

    video = os.path.join(folder, f"driving-{frames}.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=25", "-frames:v", str(frames), "-pix_fmt", "yuv420p", video], check=True)
    image = os.path.join(folder, "source.png")
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(image, np.full((64, 64, 3), 128, dtype=np.uint8))
    code = ("import resource, sys, runpy; sys.argv = ['run.py'] + sys.argv[1:]; "
            "sys.path.insert(0, %r)\ntry:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)") % (ROOT, os.path.join(ROOT, "run.py"))
    result = subprocess.run([sys.executable, "-c", code, "--mode", "animate", "--device", "cpu", "--checkpoint",
                             checkpoint, "--source_image", image, "--driving_video", video, "--result_video",
                             os.path.join(folder, f"result-{frames}.mp4"), "--batch_size", "16"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK")]
    if not peak:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    return float(peak[-1].split()[1])


def tiny_checkpoint(folder: str) -> str:
    """One training step of the tiny config on a small synthetic dataset (weights are beside the point)."""
    import torch
    import yaml

    from scripts.synthetic_dataset import generate_dataset
    from train import TrainOptions, run_training

    data = os.path.join(folder, "data")
    generate_dataset(data, seed=0, num_train_identities=2, num_test_identities=1, clips_per_identity=1,
                     num_frames=4, num_pairs=0)
    with open(os.path.join(ROOT, "config", "tiny-heatmap.yaml")) as stream:
        config = yaml.safe_load(stream)
    config["dataset_params"]["root_dir"] = data
    config["train_params"].update(num_epochs=1, num_repeats=1, batch_size=2, num_workers=0)
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as stream:
        yaml.safe_dump(config, stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_training(TrainOptions(config=path, log_dir=os.path.join(folder, "log"),
                                         device=torch.device("cpu"), max_steps=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="a training checkpoint: its weights, frame size and test frames (default: taichi-256 "
                             "with random weights on noise)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--frames", type=int, default=16, help="frames timed per setting")
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "onnxruntime"],
                        help="fp32 and bf16: PyTorch eager (bf16 autocast); onnxruntime: the exported parts, fp32")
    parser.add_argument("--skip_streaming", action="store_true")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.frames, args.checkpoint)))
        return
    import torch

    if not args.checkpoint:
        print("NOTE: RANDOM weights (no --checkpoint): speed is representative, the bf16 PSNR is not")
    print(f"{'setting':<11} {'batch':>5} {'frames/s':>9} {'s/frame':>8} {'speed-up':>8} {'GFLOP/s':>8} "
          f"{'peak MiB':>9} {'PSNR vs fp32':>12}")
    outputs, reference_seconds = {}, {}
    for precision in args.settings:
        for batch in args.batches:
            command = [sys.executable, __file__, "--one", precision, str(batch), "--frames", str(args.frames)]
            if args.checkpoint:
                command += ["--checkpoint", args.checkpoint]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                print(f"{precision:<11} {batch:>5} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            outputs[(precision, batch)] = row["output"]
            reference_seconds.setdefault(batch, row["seconds_per_frame"] if precision == "fp32" else None)
            base = reference_seconds.get(batch)
            speedup = f"{base / row['seconds_per_frame']:.2f}x" if base else "-"
            psnr = _psnr(outputs.get(("fp32", batch)), row["output"]) if precision != "fp32" else "-"
            print(f"{precision:<11} {batch:>5} {row['frames_per_s']:>9.2f} {row['seconds_per_frame']:>8.3f} "
                  f"{speedup:>8} {row['gflops']:>8.0f} {row['peak_mib']:>9.0f} {psnr:>12}", flush=True)
    height, width = row["size"]
    print(f"({row['gflop_per_frame']:.1f} GFLOP per {height}x{width} frame; channels_last; "
          f"{torch.get_num_threads()} threads)")
    if args.skip_streaming:
        return
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = tiny_checkpoint(folder)
        short, long = streaming_memory(100, checkpoint, folder), streaming_memory(2000, checkpoint, folder)
    print(f"streaming, tiny model: peak RSS {short:.0f} MiB for 100 frames, {long:.0f} MiB for 2,000 frames "
          f"({(long / short - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
