"""Pay a model's first-run costs ahead of time: export its graphs, race the engines and cache the choice.

    python scripts/prepare_engine.py models/faces-heatmap.pth.tar [--mixed_precision auto|no|bf16|int8]
        [--engine auto] [--video CLIP] [--device cpu]

What ``--mode animate`` does on its first run with a model file on this CPU (modules/inference/choice.py):
the candidates (engine and precision) race on frames of the model's size (``--video``'s first frames, fitted,
or seeded random frames) and the fastest is cached under ``$KPMASK_CACHE``, with the exported (and for int8
quantised, calibrated on the same frames) graphs. A web page or a batch job that runs this once starts every
later run on its engine at once. Prints the engine line the runs will print.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402


def frames_for(video: str | None, size: tuple[int, int], count: int):
    """(count, 3, H, W) frames in [0, 1]: the clip's first ones, fitted to ``size``, or seeded random ones."""
    import numpy as np
    import torch

    from modules.data.dataset import frames_to_tensor
    from modules.data.video_io import open_video
    from modules.inference.pipeline import fit_frame

    if video is None:
        return torch.rand(count, 3, *size, generator=torch.Generator().manual_seed(0))
    first = next(open_video(video).iter_frames(count))
    return frames_to_tensor(np.stack([fit_frame(frame, size, "crop") for frame in first]))


def prepare_engine(model_path: str, engine: str = "auto", precision: str = "auto", video: str | None = None,
                   device_name: str = "cpu") -> str:
    """Race (or prepare the one candidate of) ``model_path`` on this machine; returns the engine line."""
    import torch

    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from modules.inference.choice import CALIBRATION_FRAMES, EngineRace, load_for_inference

    if video is not None and not os.path.exists(video):
        raise UserError(f"--video {video}: file not found")
    device = choose_device(device_name)

    def calibrate(config):
        frames = frames_for(video, tuple(config.dataset_params.size), CALIBRATION_FRAMES)
        return frames[:1], frames

    config, model, _, chosen = load_for_inference(model_path, device, engine=engine, precision=precision,
                                                  calibrate=calibrate)
    print(chosen.line, flush=True)
    if not isinstance(model, EngineRace):
        return chosen.line
    size = tuple(config.dataset_params.size)
    frames = frames_for(video, size, 64)
    with torch.inference_mode():
        state = model.encode_source(frames[:1].to(device))
        while model.winner is None:                  # a race takes at most 3 turns of 2 frames per candidate
            model.animate(state, frames[:8].to(device))
    return model.line


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model file, training checkpoint or run folder")
    parser.add_argument("--engine", default="auto", help="auto (default), torch, torch-opt, onnxruntime, openvino")
    parser.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "bf16", "fp16", "int8"],
                        help="as run.py's (default auto: chosen with the engine)")
    parser.add_argument("--video", default=None, help="a clip whose first frames the race (and int8) uses")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args(argv)

    def command() -> None:
        prepare_engine(args.model, args.engine, args.mixed_precision, args.video, args.device)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
