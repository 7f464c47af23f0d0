"""Animation speed per engine and precision: s/frame, speed-up over the eager fp32 path, achieved GFLOP/s and
its fraction of this CPU's convolution rate, peak memory, PSNR against the eager fp32 output; plus streaming memory.

    python benchmarks/animate_speed.py [--checkpoint CKPT] [--batches 1 4] [--frames 8] [--settings ...]

Part 1 times ``model.animate`` (driving mask + both generators, the source encoded once) for each setting
(``torch``: eager fp32, the reference; ``torch-bf16``: eager bf16 autocast; ``torch-opt``, ``onnxruntime``,
``openvino``: the engines of modules/inference/engines.py in fp32; ``-int8``: their quantised graphs, calibrated on 4
frames that are not timed) and batch size, all on the same frames, channels_last, each in a fresh process
(peak memory is a per-process high-water mark). The fraction of the CPU's rate divides the PyTorch model's
FLOPs per second by a 256 -> 256 channel 3x3 convolution's measured rate. Without --checkpoint: the taichi-256
networks with RANDOM weights on noise frames (speed is representative, the PSNRs say little about a trained
model, and the output says so). With --checkpoint: its weights at its frame size, driven by its dataset's test
frames when they are on disk. Part 2 animates a 100-frame and a 2,000-frame driving video with a tiny
checkpoint through the real ``run.py --mode animate`` path and compares their peak memory.
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


def _model_and_frames(checkpoint: str | None, frames: int, size: int = 256):
    """(model in eval mode, source (1, 3, H, W), driving (frames, 3, H, W)). With a checkpoint: its weights, its
    frame size and, when its dataset is on disk, real test frames (the first test video's frame 0 drives
    nothing; the driving frames come from the next videos). Otherwise taichi-256 with random weights and noise."""
    import torch

    from modules.families.build import build_model

    generator = torch.Generator().manual_seed(1)
    if checkpoint:
        from modules.data.dataset import FramesDataset, frames_to_tensor
        from modules.inference.loading import load_model

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
        height = width = size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = build_model(_config_of(None, size)).eval()
    return (model, torch.rand(1, 3, height, width, generator=generator),
            torch.rand(frames, 3, height, width, generator=generator))


def _config_of(checkpoint: str | None, size: int = 256):
    from modules.config.loading import config_from_dict, load_config

    if checkpoint is None:                 # the taichi-256 networks, at ``size`` px
        config = load_config(os.path.join(ROOT, "config", "taichi-256-heatmap.yaml")).to_dict()
        config["dataset_params"]["frame_shape"] = [size, size, 3]
        return config_from_dict(config, f"taichi-256-heatmap.yaml at {size} px")
    from modules.core.files import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    return config_from_dict(read_checkpoint(path)["config"], path)


SETTINGS = ("torch", "torch-bf16", "torch-fp16", "torch-opt", "torch-opt-bf16", "torch-opt-fp16", "onnxruntime",
            "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8")


def engine_of(setting: str) -> str:
    return setting.removesuffix("-int8").removesuffix("-bf16").removesuffix("-fp16")


def on_setting(model, setting: str, source, calibration, checkpoint: str | None = None, size: int = 256):
    """``model`` on ``setting``'s engine (the suffix -int8: its graphs quantised, calibrated on ``source`` and
    the ``calibration`` frames; -bf16/-fp16 are autocast, which the caller applies)."""
    from modules.inference import engines

    engine = engine_of(setting)
    if engine == "torch":
        return model
    config = _config_of(checkpoint, size)
    parts = config.record.export_parts(config.model_params)
    int8 = engines.Int8Calibration.of(engines.capture_inputs(model, parts, source, calibration)) \
        if setting.endswith("-int8") else None
    precision = "bf16" if setting.endswith("-bf16") else None     # openvino: its bf16 hint; torch: autocast
    return engines.prepare(model, engine, parts, tuple(source.shape[-2:]), "0" * 64, int8, precision)


def measure(setting: str, batch: int, frames: int, checkpoint: str | None, size: int = 256,
            device_name: str = "cpu", repeats: int = 3) -> dict:
    """One row: ``setting`` is an engine of modules/inference/engines.py, with ``-int8`` its quantised graphs (calibrated
    on the source and 4 frames that are not timed), ``-bf16``/``-fp16`` autocast (fp16: CUDA)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modules.inference import engines
    from modules.training.summary import peak_memory_mib

    device = torch.device(device_name)
    model, source, driving = _model_and_frames(checkpoint, frames + 4, size)
    driving, calibration = driving[:frames], driving[frames:]
    dtype = torch.bfloat16 if setting.endswith("-bf16") else torch.float16 if setting.endswith("-fp16") else None
    if engine_of(setting) in engines.EXPORTED and device.type != "cpu":
        raise SystemExit(f"skipped: the exported engines run on the CPU, not {device}")
    layout = torch.channels_last
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model.animate(model.encode_source(source), driving[:1])
        flops_per_frame = counter.get_total_flops()         # of the PyTorch model, whatever runs it below
    os.environ["KPMASK_CACHE"] = tempfile.mkdtemp(prefix="animate-speed-")     # export afresh
    model = on_setting(model, setting, source, calibration, checkpoint, size).to(device, memory_format=layout)
    source, driving = (x.to(device).contiguous(memory_format=layout) for x in (source, driving))

    def run(chunk: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model.animate(state, chunk).prediction.float().cpu()        # .cpu() waits for a GPU

    with torch.inference_mode():
        state = model.encode_source(source)
        run(driving[:batch])                                   # warm-up
        passes = []
        for _ in range(repeats):   # the fastest pass: the least disturbed by other work on a shared machine
            start = time.perf_counter()
            outputs = [run(driving[i:i + batch]) for i in range(0, frames, batch)]
            passes.append(time.perf_counter() - start)
        seconds = min(passes)
    rate = conv_rate() if device.type == "cpu" else None      # measured in this process, beside its rows
    output_path = os.path.join(tempfile.gettempdir(), f"animate-speed-{setting}-{batch}.pt")
    torch.save(torch.cat(outputs), output_path)
    return {"setting": setting, "batch": batch, "frames_per_s": frames / seconds,
            "seconds_per_frame": seconds / frames, "gflops": flops_per_frame * frames / seconds / 1e9,
            "gflop_per_frame": flops_per_frame / 1e9, "peak_mib": peak_memory_mib(device),
            "size": list(driving.shape[-2:]), "output": output_path, "conv_rate": rate}


def conv_rate(repeats: int = 10) -> float:
    """This CPU's fp32 3x3 convolution rate (GFLOP/s): 256 -> 256 channels at 64x64, channels_last, the
    fastest of ``repeats`` (the shape the taichi-256 residual blocks run most)."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return 2 * 256 * 256 * 9 * 64 * 64 / min(times) / 1e9


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

    from modules.data.synthetic import generate_dataset
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
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--frames", type=int, default=8, help="frames timed per setting")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                        help="engines (modules/inference/engines.py) and precisions; torch is the fp32 eager reference")
    parser.add_argument("--skip_streaming", action="store_true")
    parser.add_argument("--size", type=int, default=256, help="frame side of the taichi-256 networks (no --checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the exported engines are skipped on cuda)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.frames, args.checkpoint, args.size, args.device)))
        return
    import torch

    if not args.checkpoint:
        print("NOTE: RANDOM weights (no --checkpoint): speed is representative, the PSNRs are not")
    print(f"{'setting':<17} {'batch':>5} {'s/frame':>8} {'speed-up':>8} {'GFLOP/s':>8} {'of conv rate':>12} "
          f"{'peak MiB':>9} {'PSNR vs torch':>13}")
    outputs, reference_seconds, row = {}, {}, None
    for setting in args.settings:
        for batch in args.batches:
            command = [sys.executable, __file__, "--one", setting, str(batch), "--frames", str(args.frames),
                       "--size", str(args.size), "--device", args.device]
            if args.checkpoint:
                command += ["--checkpoint", args.checkpoint]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                message = (result.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{setting:<17} {batch:>5} {'' if message.startswith('skipped') else 'failed: '}{message}")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            outputs[(setting, batch)] = row["output"]
            if setting == "torch":
                reference_seconds[batch] = row["seconds_per_frame"]
            base = reference_seconds.get(batch)
            speedup = f"{base / row['seconds_per_frame']:.2f}x" if base else "-"
            psnr = _psnr(outputs.get(("torch", batch)), row["output"]) if setting != "torch" else "-"
            rate = row["conv_rate"]                  # this CPU's 3x3 convolution rate, measured beside the row
            of_conv = f"{row['gflops'] / rate:.0%} of {rate:.0f}" if rate else "-"
            print(f"{setting:<17} {batch:>5} {row['seconds_per_frame']:>8.3f} {speedup:>8} {row['gflops']:>8.0f} "
                  f"{of_conv:>12} {row['peak_mib']:>9.0f} {psnr:>13}", flush=True)
    if row:
        height, width = row["size"]
        print(f"(GFLOP/s counts the PyTorch model's {row['gflop_per_frame']:.1f} GFLOP per {height}x{width} frame for "
              f"every row: the rewrites do fewer; channels_last; {torch.get_num_threads()} threads)")
    if args.skip_streaming:
        return
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = tiny_checkpoint(folder)
        short, long = streaming_memory(100, checkpoint, folder), streaming_memory(2000, checkpoint, folder)
    print(f"streaming, tiny model: peak RSS {short:.0f} MiB for 100 frames, {long:.0f} MiB for 2,000 frames "
          f"({(long / short - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
