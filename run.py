"""Command line: ``python run.py --config CONFIG --mode MODE [options]`` (also installed as ``kpmask``).

Argument parsing, device choice and dispatch to the modes; the work itself lives in the modules.
Bad input ends with one line on stderr naming the file, key or value, and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

MODES = ("train", "reconstruction", "animate", "inspect", "app", "live")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite_number(text: str, smallest: float, strictly: bool, expected: str) -> float:
    """A finite float >= ``smallest`` (> with ``strictly``), or an argparse error saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")                       # fails every comparison below
    if not (value > smallest if strictly else value >= smallest) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def strength(text: str) -> float:
    return _finite_number(text, 0.0, False, "a strength >= 0 (0: off)")


def megabytes(text: str) -> float:
    return _finite_number(text, 0.0, True, "a size in MB > 0")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from modules.core.cli import OneLineArgumentParser

    parser = OneLineArgumentParser(
        prog="kpmask", description="Image animation with keypoint masks (Toledano, Marmor, Gertz).")
    parser.add_argument("--config", default=None,
                        help="YAML config, e.g. config/taichi-256-heatmap.yaml or config/tiny-fomm.yaml (optional "
                             "with a --checkpoint of this project: it holds its config, and a --config beside it changes "
                             "only metrics_params, reconstruction_params, animate_params and visualizer_params; "
                             "needed beside an official FOMM checkpoint such as vox-cpk.pth.tar: "
                             "config/vox-256-fomm.yaml)")
    parser.add_argument("--mode", default="train", choices=MODES,
                        help="train: train the config's model (keypoint-mask generators, or FOMM itself = stage "
                             "one; a new run folder in --log_dir, or resume "
                             "--checkpoint); reconstruction: rebuild the test videos from their first frame "
                             "with --checkpoint and report L1/PSNR/SSIM; animate: move --source_image like "
                             "--driving_video with --checkpoint; inspect: build the networks, run one "
                             "forward and one forward+backward on generated images, print parameters, shapes, "
                             "time and memory; app: serve the web page (--host, --port, --models); live: move "
                             "--source_image like a camera or a stream of frames (--driving_video /dev/video0, or - "
                             "with --size), newest frame first, until it ends or Ctrl-C")
    parser.add_argument("--checkpoint_with_kp", default=None,
                        help="FOMM checkpoint (vox-cpk.pth.tar, taichi-cpk.pth.tar, ...) holding the "
                             "pretrained kp_detector")
    parser.add_argument("--vgg_weights", default=None,
                        help="overrides train_params.vgg_weights: imagenet, random, or a path to a "
                             "torchvision vgg19 state dict")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="inspect: batch of the timed step (default 1); reconstruction and animate: frames "
                             "generated at once (default 8)")
    parser.add_argument("--exclude_first_frame", action="store_true", default=None,
                        help="reconstruction: leave frame 0 (the source) out of the metrics, as the "
                             "perturbed-masks paper does (default: FOMM's protocol, frame 0 counted)")
    parser.add_argument("--seed", type=int, default=None, help="overrides train_params.seed (default 0)")
    parser.add_argument("--engine", choices=("auto", "torch", "torch-opt", "onnxruntime", "openvino"), default=None,
                        help="reconstruction and animate: torch (eager PyTorch, the reference), torch-opt (PyTorch "
                             "with BatchNorm folded and sub-pixel up blocks, exact), onnxruntime or openvino (the "
                             "model's parts exported to ONNX once and cached), or auto (the fastest, measured on "
                             "this CPU at first use and cached; the default, or $KPMASK_ENGINE)")
    parser.add_argument("--ablation", choices=("none", "no_pert", "no_ref", "no_id"), default=None,
                        help="reconstruction and animate, perturbed-masks checkpoints: run the paper's ablation "
                             "(no_pert: no P_test; no_ref: no refinement; no_id: neither) instead of the config's; "
                             "results go to <mode>-<ablation>/")
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="reconstruction: evaluate on another dataset instead of the model's own: ROOT's test/ "
                             "videos, or every video of ROOT when it has no train/ and test/ (results go to "
                             "reconstruction-<ROOT's name>/)")
    _add_animate_arguments(parser.add_argument_group("animate"))
    _add_train_arguments(parser.add_argument_group("train"))
    _add_app_arguments(parser.add_argument_group("app"))
    _add_live_arguments(parser.add_argument_group("live"))
    return parser.parse_args(argv)


def _add_animate_arguments(animate: argparse._ArgumentGroup) -> None:
    animate.add_argument("--source_image", default=None, help="png/jpg image of any size (RGBA, grey, 16-bit too)")
    animate.add_argument("--driving_video", default=None, help="mp4/mov/gif or a folder of frames, any size and fps")
    animate.add_argument("--result_video", default=None,
                         help="output .mp4/.mov/.gif (default: <source name>-animated.mp4 here)")
    animate.add_argument("--motion", choices=("relative", "absolute"), default=None,
                         help="circles checkpoints: relative (default) or absolute; heatmap ones are absolute")
    animate.add_argument("--adapt_scale", action="store_true",
                         help="relative motion scaled by the ratio of the source's and driver's keypoint hulls")
    animate.add_argument("--find_best_frame", action="store_true",
                         help="relative motion: take as the driver's reference the frame whose pose (landmarks of "
                              "metrics_params.landmarks) is closest to the source's, instead of frame 0")
    animate.add_argument("--fit", choices=("crop", "resize"), default="crop",
                         help="how images of another shape meet the model's frame size: crop (centre crop to "
                              "the aspect ratio, then resize; default) or resize (stretch)")
    animate.add_argument("--crop", default="auto", metavar="auto|none|x,y,w,h",
                         help="the source image's square crop box: auto (default: find the face, body or synthetic "
                              "figure with the config's landmark detector, framed as the training data are), none "
                              "(the whole image, fitted by --fit), or x,y,w,h in pixels (x the column, y the row "
                              "of the top-left corner, w = h); the result is pasted back into the image")
    animate.add_argument("--driving_crop", default="auto", metavar="auto|none|x,y,w,h",
                         help="the driving video's crop box, one for the whole video (as --crop)")
    animate.add_argument("--no_paste_back", action="store_true",
                         help="write the animated crop at the model's size instead of pasting it back into the "
                              "source image")
    animate.add_argument("--smooth", type=strength, default=0.0, metavar="STRENGTH",
                         help="steady the driving keypoints with a One-Euro filter of this strength (1: moderate, "
                              "higher: steadier but laggier; default 0: off); circles and FOMM models")
    animate.add_argument("--visualize", action="store_true",
                         help="also write source | driving | driving mask | result side by side, as "
                              "<result>-side-by-side.mp4 beside the result")
    animate.add_argument("--overwrite", action="store_true",
                         help="replace an existing --result_video (and its side-by-side); without it an existing "
                              "file is refused")


def _add_train_arguments(train: argparse._ArgumentGroup) -> None:
    train.add_argument("--log_dir", default="log", help="where new run folders are made (default: log)")
    train.add_argument("--checkpoint", default=None,
                       help="a NNNNNNNN-checkpoint.pth.tar or a run folder (its latest checkpoint): train resumes "
                            "it exactly (--config may then change train_params only); reconstruction and animate "
                            "use its weights and config")
    train.add_argument("--init_checkpoint", default=None,
                       help="start a new run from this checkpoint's weights (fine-tuning): new optimizer, epoch 0")
    train.add_argument("--mixed_precision", choices=("auto", "no", "bf16", "fp16", "int8"), default=None,
                       help="train: overrides train_params.mixed_precision (no, bf16 autocast, fp16 with a "
                            "gradient scaler on GPU); reconstruction and animate: auto (the default, or "
                            "$KPMASK_PRECISION) runs bf16 where the CPU has AMX or AVX512-BF16 (about 4x faster "
                            "there) and fp32 elsewhere, where bf16 is emulated and slower; int8 runs the exported "
                            "parts quantised, calibrated on the run's first frames, and prints its PSNR against fp32")
    train.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                       help="overrides train_params.channels_last")
    train.add_argument("--max_steps", type=positive_int, default=None,
                       help="stop after this many training steps in all, with a checkpoint (resumable)")


def _add_app_arguments(app: argparse._ArgumentGroup) -> None:
    app.add_argument("--host", default="127.0.0.1",
                     help="address the page is served on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                          "network interface)")
    app.add_argument("--port", type=positive_int, default=7860, help="port of the page (default 7860)")
    app.add_argument("--models", default=None, metavar="FOLDER",
                     help="also offer the checkpoints and model files in this folder (and its run folders)")
    app.add_argument("--max_upload_mb", type=megabytes, default=50.0,
                     help="largest source image or driving video accepted, in MB (default 50)")
    app.add_argument("--max_frames", type=positive_int, default=1000,
                     help="longest driving video accepted, in frames (default 1000)")


def _add_live_arguments(live: argparse._ArgumentGroup) -> None:
    live.add_argument("--size", default=None, metavar="WxH",
                      help="live: the size of the raw rgb24 frames of --driving_video - (needed), or the camera's "
                           "capture size (default 640x480)")
    live.add_argument("--fps", type=float, default=25.0,
                      help="live: the frame rate of raw frames on standard input or of the camera (default 25): "
                           "the result video's rate and --smooth's time base; a video file plays at its own")


def live(args: argparse.Namespace) -> None:
    """Animate one image by a camera or a stream of frames as they come (see modules/inference/live_run.py)."""
    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from modules.inference.live_run import LiveOptions, animate_live, parse_size

    if args.checkpoint is None or args.source_image is None or args.driving_video is None:
        raise UserError("--mode live needs --checkpoint, --source_image and --driving_video (a camera such as "
                        "/dev/video0, - for raw rgb24 frames on standard input with --size, or a video file)")
    options = LiveOptions(
        motion=args.motion, adapt_scale=args.adapt_scale, fit=args.fit, crop=args.crop,
        driving_crop=args.driving_crop, paste=not args.no_paste_back, smooth=args.smooth, rate=args.fps,
        result=args.result_video, size=parse_size(args.size) if args.size else None, overwrite=args.overwrite,
        precision=args.mixed_precision, engine=args.engine, config_path=args.config)
    animate_live(args.checkpoint, args.source_image, args.driving_video, options, device=choose_device(args.device))


def app(args: argparse.Namespace) -> None:
    """Serve the web page (see modules/app/page.py)."""
    from modules.app.files import Limits
    from modules.app.page import AppOptions, serve

    serve(AppOptions(host=args.host, port=args.port, models=args.models, device=args.device,
                     limits=Limits(upload_mb=args.max_upload_mb, frames=args.max_frames)))


def train(args: argparse.Namespace) -> None:
    """Train the generators (see train.py); torchrun starts one of these per process for DDP."""
    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from train import TrainOptions, run_training

    if args.mixed_precision in ("auto", "int8"):
        raise UserError(f"--mixed_precision {args.mixed_precision} is for reconstruction and animate; training takes "
                        "no, bf16 or fp16 "
                        "(default: the config's train_params.mixed_precision, so that a resume stays exact)")
    run_training(TrainOptions(
        config=args.config, checkpoint=args.checkpoint, init_checkpoint=args.init_checkpoint,
        checkpoint_with_kp=args.checkpoint_with_kp, log_dir=args.log_dir, device=choose_device(args.device),
        seed=args.seed, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
        vgg_weights=args.vgg_weights, max_steps=args.max_steps, argv=args.command))


def reconstruction(args: argparse.Namespace) -> None:
    """Reconstruct the test videos of the checkpoint's dataset (see reconstruction.py)."""
    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from reconstruction import reconstruct

    if args.checkpoint is None:
        raise UserError("--mode reconstruction needs --checkpoint (a training checkpoint or its run folder)")
    reconstruct(args.checkpoint, choose_device(args.device), batch_size=args.batch_size or 8,
                exclude_first_frame=args.exclude_first_frame, config_path=args.config, ablation=args.ablation,
                engine=args.engine, precision=args.mixed_precision, data=args.data)


def animate(args: argparse.Namespace) -> None:
    """Animate one image by one video (see animate.py)."""
    from animate import animate_dataset
    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from modules.inference.pipeline import AnimationOptions, animate_single

    if args.checkpoint is None:
        raise UserError("--mode animate needs --checkpoint (a training checkpoint or its run folder)")
    if args.source_image is None:
        if args.find_best_frame:
            raise UserError("--find_best_frame is for one image by one video (--source_image, --driving_video); "
                            "the dataset's pairs always start from the driver's frame 0")
        for flag, value in (("--crop", args.crop), ("--driving_crop", args.driving_crop)):
            if value != "auto":
                raise UserError(f"{flag} {value}: the dataset's pairs are never cropped (their frames are the "
                                f"training crops); it is for --source_image and --driving_video")
        animate_dataset(args.checkpoint, device=choose_device(args.device), motion=args.motion,
                        adapt_scale=args.adapt_scale, batch_size=args.batch_size or 8,
                        precision=args.mixed_precision, config_path=args.config, ablation=args.ablation,
                        engine=args.engine, smooth=args.smooth)
        return
    options = AnimationOptions(
        result_video=args.result_video, motion=args.motion, adapt_scale=args.adapt_scale, fit=args.fit,
        batch_size=args.batch_size or 8, visualize=args.visualize, precision=args.mixed_precision,
        find_best_frame=args.find_best_frame, config_path=args.config, ablation=args.ablation,
        overwrite=args.overwrite, engine=args.engine, crop=args.crop, driving_crop=args.driving_crop,
        paste=not args.no_paste_back, smooth=args.smooth)
    animate_single(args.checkpoint, args.source_image, args.driving_video, options, device=choose_device(args.device))


def inspect(args: argparse.Namespace) -> None:
    """Build the config's model, time one step on generated images, and print what was built."""
    import torch

    from modules.config.loading import load_config
    from modules.core.device import choose_device
    from modules.core.errors import UserError
    from modules.families.build import build_model, build_trainable
    from modules.training.summary import summarize

    if args.config is None:
        raise UserError("--mode inspect needs --config")
    config = load_config(args.config)
    device = choose_device(args.device)
    seed = config.train_params.seed if args.seed is None else args.seed
    torch.manual_seed(seed)
    model = build_model(config, checkpoint_with_kp=args.checkpoint_with_kp)
    trainable = build_trainable(config, model, vgg_weights=args.vgg_weights,
                                vgg_source="--vgg_weights" if args.vgg_weights else "train_params.vgg_weights")
    batch_size = args.batch_size or 1
    summary = summarize(trainable, config.dataset_params.size, device, batch_size=batch_size, seed=seed)
    kind = config.motion_name
    print(f"config     {args.config}  ({kind}, frames {config.dataset_params.size[0]}x"
          f"{config.dataset_params.size[1]}, device {device}, batch {batch_size})")
    if config.record.reads_detector:          # the perturbed-masks model learns its masks: no detector
        print(f"detector   {args.checkpoint_with_kp or 'random weights (no --checkpoint_with_kp)'}")
    for name, count in summary.parameters.items():
        print(f"params     {name:<34} {count / 1e6:8.2f} M")
    for name, shape in summary.shapes.items():
        print(f"shape      {name:<34} {tuple(shape)}")
    print(f"time       forward             {summary.forward_s:8.3f} s")
    print(f"time       forward+backward    {summary.forward_backward_s:8.3f} s  (with the training losses)")
    print(f"memory     peak                {summary.peak_memory_mib:8.0f} MiB "
          f"({'CUDA allocated' if device.type == 'cuda' else 'process resident'})")
    print("loss       " + ", ".join(f"{k} {v:.4f}" for k, v in summary.loss.items()))


def check_paths(args: argparse.Namespace) -> None:
    """The paths a command names, checked with the standard library before torch is imported (a typo costs
    a second, not the 5 s of imports): inputs exist and are what they should be, outputs can be written
    without destroying anything (modules/core/outputs.py)."""
    import os

    from modules.core.errors import UserError
    from modules.core.outputs import check_data_folder, check_output_file, check_output_folder

    if args.data is not None:
        if args.mode != "reconstruction":
            raise UserError(f"--data is for --mode reconstruction (another dataset to evaluate on), not {args.mode}")
        check_data_folder(args.data)
    if args.mode == "train" and args.checkpoint and args.init_checkpoint:
        raise UserError("--checkpoint (resume a run) and --init_checkpoint (start a new run from weights) "
                        "exclude each other")
    if args.config is not None:
        if os.path.isdir(args.config):
            raise UserError(f"{args.config}: is a folder, expected a YAML config file (--config)")
        if not os.path.exists(args.config):
            raise UserError(f"{args.config}: config file not found (--config)")
        if args.mode == "inspect" or (args.mode == "train" and args.checkpoint is None):
            # A whole config: validate it now (no torch needed); its warnings come when the mode reads it.
            from modules.config.loading import load_config

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_config(args.config)
    for flag in ("checkpoint", "checkpoint_with_kp", "init_checkpoint"):
        path = getattr(args, flag)
        if path is not None and not os.path.exists(path):
            raise UserError(f"{path}: checkpoint file not found (--{flag}: a checkpoint file or a run folder)")
    if args.mode == "animate" and (args.source_image is None) != (args.driving_video is None):
        raise UserError("--mode animate: give both --source_image and --driving_video (one image by one video), "
                        "or neither (the test pairs of the checkpoint's dataset)")
    if args.mode == "animate" and args.source_image is not None:
        if not os.path.exists(args.source_image):
            raise UserError(f"{args.source_image}: file not found (--source_image)")
        if os.path.isdir(args.source_image):
            raise UserError(f"{args.source_image}: is a folder, expected an image file (--source_image)")
        if args.driving_video is not None and not os.path.exists(args.driving_video):
            raise UserError(f"{args.driving_video}: not found (--driving_video: a video file or a frame folder)")
        from modules.core.outputs import default_result, side_by_side_path
        from modules.data.video_io import WRITABLE_EXTENSIONS

        inputs = (args.source_image, args.driving_video, args.checkpoint, args.config, args.checkpoint_with_kp)
        result = args.result_video or default_result(args.source_image)
        check_output_file(result, what="--result_video", inputs=inputs, overwrite=args.overwrite,
                          extensions=WRITABLE_EXTENSIONS)
        if args.visualize:
            check_output_file(side_by_side_path(result), what="--visualize", inputs=inputs,
                              overwrite=args.overwrite)
    if args.mode == "train":
        check_output_folder(args.log_dir, what="--log_dir",
                            inputs=(args.config, args.checkpoint_with_kp, args.init_checkpoint))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"WARNING: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from modules.core.cli import exit_status

    args = parse_args(argv)
    args.command = list(sys.argv) if argv is None else ["run.py", *argv]     # recorded in the run folder
    warnings.formatwarning = _format_warning

    def command() -> None:
        check_paths(args)
        {"train": train, "reconstruction": reconstruction, "animate": animate,
         "inspect": inspect, "app": app, "live": live}[args.mode](args)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
