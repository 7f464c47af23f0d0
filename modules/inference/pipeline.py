"""The one animation pipeline: the command line (``--mode animate``), the web page, the demos and the benchmarks
all animate through it.

``prepare_model`` is the inference preamble (precision, then the model on its engine, one line saying which);
``Frames`` is the source image and the driving video as the model sees them (cropped by ``--crop auto`` or
fitted); ``stream_animation`` generates frames batch by batch from a stream of driving frames into a video
writer, so memory does not grow with the video's length and the source's part (mask, keypoints) is computed
once; ``animate_single`` is one image animated by one video with ``AnimationOptions``.

Motion (FOMM's relative animation; keypoint-mask paper sec. 2.2): heatmap models animate absolutely (the mask has
no points to move); circles and FOMM models move the source's keypoints by the driver's motion since its first
frame (relative, the default; FOMM moves the Jacobians too) or use the driver's keypoints as they are (absolute).
With ``find_best_frame`` the relative motion is measured from the driving frame whose pose is closest to the
source's instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from modules.core.errors import UserError
from modules.core.outputs import check_output_file, default_result, side_by_side_path
from modules.core.pictures import side_by_side, to_uint8
from modules.core.precision import autocast, autocast_dtype, inference_precision
from modules.data.dataset import frames_to_tensor
from modules.data.video_io import WRITABLE_EXTENSIONS, VideoWriter, load_image, open_video, resize_frame
from modules.inference.choice import CALIBRATION_FRAMES, load_for_inference
from modules.inference.crop import CropPlan, crop_to, parse_box, plan_crops
from modules.inference.smoothing import KeypointSmoother

FITS = ("crop", "resize")


def fit_frame(frame: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    """RGB uint8 (h, w, 3) of any size -> (H, W, 3): 'crop' keeps the aspect ratio (centre crop to the frame's
    aspect, then resize), 'resize' stretches the whole picture."""
    if fit == "crop":
        height, width = frame.shape[:2]
        target = size[1] / size[0]                     # width / height
        if width / height > target:                    # too wide: cut the sides
            keep = max(1, round(height * target))
            left = (width - keep) // 2
            frame = frame[:, left:left + keep]
        else:                                          # too tall: cut top and bottom
            keep = max(1, round(width / target))
            top = (height - keep) // 2
            frame = frame[top:top + keep]
    return resize_frame(np.ascontiguousarray(frame), size)


def choose_motion(config, motion: Optional[str], adapt_scale: bool, source: str) -> tuple[str, bool]:
    """The motion a checkpoint animates with, and whether relative motion is scaled by the ratio of the
    source's and the driver's keypoint hull areas (FOMM's ``adapt_movement_scale``): heatmap absolute;
    circles and FOMM relative unless told otherwise. ``adapt_scale`` (the flag) asks for scaling and is refused
    for absolute motion; the config's ``animate_params.normalization_params.adapt_movement_scale`` turns it on
    wherever motion is relative."""
    normalization = config.animate_params.normalization_params
    if motion is None:
        relative = config.relative_motion_possible and normalization.use_relative_movement
        motion = "relative" if relative else "absolute"
    if motion == "relative" and not config.relative_motion_possible:
        raise UserError(f"--motion relative: {source} is a {config.motion_name} model, which has "
                        f"no keypoints to move; it animates absolutely (use a circles or FOMM checkpoint for "
                        f"relative motion)")
    if adapt_scale and motion != "relative":
        raise UserError("--adapt_scale scales relative motion; it needs --motion relative and a circles or FOMM "
                        "checkpoint")
    return motion, motion == "relative" and (adapt_scale or normalization.adapt_movement_scale)


def stream_animation(model, source: np.ndarray, batches: Iterator[np.ndarray], writer: Optional[VideoWriter], *,
                     size: tuple[int, int], device: torch.device, motion: str, adapt_scale: bool,
                     progress: tqdm, strip: Optional[list] = None, precision: Optional[str] = None,
                     reference: Optional[np.ndarray] = None, use_relative_jacobian: bool = True,
                     visual: Optional[list] = None, side_writer: Optional[VideoWriter] = None,
                     smooth: Optional[KeypointSmoother] = None,
                     paste: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
    """Generate the frames driven by ``batches`` (uint8 (n, H, W, 3), already fitted) into ``writer``, and
    source | driving | mask | result into ``side_writer`` if given.
    Relative motion is measured from ``reference`` (a fitted driving frame), by default the first frame.
    ``strip`` collects the predictions (uint8 (n, H, W, 3) per batch), ``visual`` the side-by-side frames
    (uint8 (n, H, columns*W, 3) per batch). ``smooth`` steadies the driving keypoints (its state runs on
    from batch to batch); ``paste`` turns each batch of predictions into the frames ``writer`` gets (the
    crop pasted back into the source photo, modules/inference/crop.py)."""
    layout = torch.channels_last            # NHWC convolutions: faster on CPU and on tensor cores
    dtype = autocast_dtype(precision, device)
    initial = None                          # relative motion: the reference frame's keypoints (1, K, 2)
    with autocast(device, dtype):
        state = model.encode_source(frames_to_tensor(source[None]).to(device, memory_format=layout))   # once
        if reference is not None and motion == "relative":
            initial = model.keypoints(frames_to_tensor(reference[None]).to(device, memory_format=layout))
    for frames in batches:
        driving = frames_to_tensor(frames).to(device, memory_format=layout)
        with autocast(device, dtype):
            steady = {} if smooth is None else {"smooth": smooth}
            if motion == "absolute":
                output = model.animate(state, driving, **steady)
            else:
                if initial is None:         # the video's first frame is the reference
                    initial = model.keypoints(driving[:1])
                output = model.animate(state, driving, initial, adapt_scale=adapt_scale,
                                       use_relative_jacobian=use_relative_jacobian, **steady)
        prediction = to_uint8(output.prediction, size)
        shown = side_by_side(model.visual_columns(state, driving, output), size) \
            if side_writer is not None or visual is not None else None
        if writer is not None:
            writer.write(prediction if paste is None else paste(prediction))
        if side_writer is not None:
            side_writer.write(shown)
        if visual is not None:
            visual.append(shown)
        if strip is not None:
            strip.append(prediction)
        progress.update(len(frames))


class ReportingBar(tqdm):
    """A progress bar that also tells ``report(done, total)`` of each update (None: a plain bar)."""

    def __init__(self, report: Optional[Callable[[int, int], None]], **options):
        super().__init__(**options)
        self.report = report

    def update(self, n: int = 1) -> Optional[bool]:
        shown = super().update(n)
        if self.report is not None:
            self.report(self.n, self.total)
        return shown


class Frames:
    """The source image and the driving video as the model sees them: cropped to the boxes ``--crop`` and
    ``--driving_crop`` choose (modules/inference/crop.py; planned once, on the first call that has the config) or, with
    no box, fitted to the model's size by ``fit``."""

    def __init__(self, source_image: str, driving_video: str, fit: str, crop: str, driving_crop: str):
        self.files, self.fit, self.settings = (source_image, driving_video), fit, (crop, driving_crop)
        self.photo = load_image(source_image)
        self.video = open_video(driving_video)
        self.plan: Optional[CropPlan] = None

    def planned(self, config) -> CropPlan:
        if self.plan is None:
            self.plan = plan_crops(config, self.photo, self.files[0], self.video, self.files[1], *self.settings)
            print("; ".join(self.plan.lines))
        return self.plan

    def source(self, config) -> np.ndarray:
        box, size = self.planned(config).source, config.dataset_params.size
        return fit_frame(self.photo, size, self.fit) if box is None else crop_to(self.photo, box, size)

    def driving(self, config, frames: np.ndarray) -> np.ndarray:
        """Decoded driving frames (n, h, w, 3) -> the model's (n, H, W, 3)."""
        box, size = self.planned(config).driving, config.dataset_params.size
        return np.stack([fit_frame(f, size, self.fit) if box is None else crop_to(f, box, size) for f in frames])

    def calibration(self, config, count: int = CALIBRATION_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
        """int8's calibration frames for ``load_for_inference`` (asked for only when int8 needs them): the
        source (1, 3, H, W) and the driving video's first ``count`` frames (n, 3, H, W), as animated."""
        first = next(self.video.iter_frames(count))
        return frames_to_tensor(self.source(config)[None]), frames_to_tensor(self.driving(config, first))


@dataclasses.dataclass
class AnimationOptions:
    """How one image is animated by one video (``run.py --mode animate``'s flags; the web page fills the same).

    result_video: the result (default ``<source>-animated.mp4``; an existing file is refused unless ``overwrite``);
    visualize: also ``<result>-side-by-side.mp4``; motion/adapt_scale: relative or absolute motion (default: the
    model's), relative motion scaled to the source's size; fit: how a frame without a crop box becomes the model's
    size ('crop' or 'resize'); crop/driving_crop: 'auto', 'none' or 'x,y,w,h'; paste: the animated crop pasted back
    into the source photo; smooth: ``--smooth``'s strength (0: off); find_best_frame: relative motion from the
    driving frame closest to the source's pose; precision/engine: as ``prepare_model``; config_path: the config of
    a FOMM-format checkpoint; ablation: a perturbed-masks ablation."""

    result_video: Optional[str] = None
    motion: Optional[str] = None
    adapt_scale: bool = False
    fit: str = "crop"
    batch_size: int = 8
    visualize: bool = False
    precision: Optional[str] = None
    find_best_frame: bool = False
    config_path: Optional[str] = None
    ablation: Optional[str] = None
    overwrite: bool = False
    engine: Optional[str] = None
    crop: str = "auto"
    driving_crop: str = "auto"
    paste: bool = True
    smooth: float = 0.0


@dataclasses.dataclass
class Prepared:
    """A model ready to animate: its config, the model (on its engine, channels-last), the checkpoint's entries
    (``path``, ``step``, ...) and the precision it runs in."""

    config: Any
    model: Any
    checkpoint: dict
    precision: Optional[str]


def prepare_model(checkpoint_path: str, device: torch.device, *, precision: Optional[str] = None,
                  engine: Optional[str] = None, config_path: Optional[str] = None, ablation: Optional[str] = None,
                  calibrate: Optional[Callable] = None, channels_last: bool = True, batch_size: int = 8) -> Prepared:
    """The inference preamble of every mode: load the model on the engine and precision asked for (``None``: the
    defaults, auto, which choose both together; modules/inference/choice.py) and print one line saying which.
    ``channels_last``: NHWC weights, as animation feeds its frames (reconstruction keeps the stored layout).
    ``batch_size``: the frames the mode runs at once; the memory check before loading estimates with it."""
    precision, precision_line = inference_precision(precision, device)
    config, model, checkpoint, chosen = load_for_inference(
        checkpoint_path, device, config_path=config_path, ablation=ablation, engine=engine, precision=precision,
        calibrate=calibrate, batch_size=batch_size)
    print(precision_line + "; " + chosen.line)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Prepared(config, model, checkpoint, chosen.precision)


def animate_single(checkpoint_path: str, source_image: str, driving_video: str,
                   options: Optional[AnimationOptions] = None, *, device: torch.device,
                   report: Optional[Callable[[int, int], None]] = None) -> str:
    """Animate ``source_image`` by ``driving_video`` as ``options`` say; returns the result's path. The model
    animates the crops ``options.crop``/``driving_crop`` choose; ``report(done, total)`` hears of every batch
    written (the web page's progress bar). Outputs are checked before anything is loaded (modules/core/outputs.py)."""
    o = options or AnimationOptions()
    result_video = o.result_video or default_result(source_image)
    side_path = _check_arguments(result_video, (source_image, driving_video, checkpoint_path, o.config_path),
                                 overwrite=o.overwrite, visualize=o.visualize, fit=o.fit,
                                 crops=(("--crop", o.crop), ("--driving_crop", o.driving_crop)))
    frames = Frames(source_image, driving_video, o.fit, o.crop, o.driving_crop)
    prepared = prepare_model(checkpoint_path, device, precision=o.precision, engine=o.engine,
                             config_path=o.config_path, ablation=o.ablation, calibrate=frames.calibration,
                             batch_size=o.batch_size)
    config, model, checkpoint = prepared.config, prepared.model, prepared.checkpoint
    motion, adapt_scale = choose_motion(config, o.motion, o.adapt_scale, checkpoint["path"])
    if o.find_best_frame and motion != "relative":
        raise UserError("--find_best_frame picks the reference frame of relative motion; absolute motion has "
                        "none (use a circles or FOMM checkpoint with --motion relative)")
    smoother = steadier(config, o.smooth, frames.video.fps or 25.0, checkpoint["path"])
    source, video = frames.source(config), frames.video
    reference = None
    if o.find_best_frame:
        best = best_frame(config, source, video, lambda f: frames.driving(config, f), o.batch_size)
        reference = frames.driving(config, video.read([best]))[0]
    fps = video.fps or 25.0
    batches = (frames.driving(config, chunk) for chunk in video.iter_frames(o.batch_size))
    paster = frames.planned(config).paster(frames.photo, o.paste)
    progress = ReportingBar(report, total=video.num_frames, unit="frame", dynamic_ncols=True)
    # A failure or a signal before the end removes both partial files: neither name gets a half-written video.
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        writer = stack.enter_context(VideoWriter(result_video, fps=fps, audio_from=driving_video))
        side = stack.enter_context(VideoWriter(side_path, fps=fps, audio_from=driving_video)) if side_path else None
        stream_animation(model, source, batches, writer, size=config.dataset_params.size, device=device,
                         motion=motion, adapt_scale=adapt_scale, progress=progress, precision=prepared.precision,
                         reference=reference, side_writer=side, smooth=smoother, paste=paster,
                         use_relative_jacobian=config.animate_params.normalization_params.use_relative_jacobian)
    progress.close()
    pasted = f"; pasted back into the {frames.photo.shape[1]}x{frames.photo.shape[0]} image" if paster else ""
    print(f"{result_video}: {writer.frames} frames at {fps:g} fps ({motion} motion"
          f"{', audio carried over' if writer.audio_from else ''}{pasted})"
          + (f"; side by side: {side_path}" if side_path else ""))
    return result_video


def _check_arguments(result_video: str, inputs: tuple, *, overwrite: bool, visualize: bool, fit: str,
                     crops: tuple) -> Optional[str]:
    """What can be refused before anything is loaded; returns the side-by-side path (or None)."""
    check_output_file(result_video, what="--result_video", inputs=inputs, overwrite=overwrite,
                      extensions=WRITABLE_EXTENSIONS)
    side_path = side_by_side_path(result_video) if visualize else None
    if side_path:
        check_output_file(side_path, what="--visualize", inputs=inputs, overwrite=overwrite)
    check_framing(fit, crops)
    return side_path


def check_framing(fit: str, crops: tuple) -> None:
    """``--fit`` and the ``(flag, value)`` crop boxes, refused before anything is loaded (animate and live)."""
    if fit not in FITS:
        raise UserError(f"--fit {fit!r}: expected one of {', '.join(FITS)}")
    for flag, value in crops:
        if value not in ("auto", "none"):
            parse_box(value, flag)                              # a malformed box fails before loading


def steadier(config, strength: float, rate: float, source: str) -> Optional[KeypointSmoother]:
    """``--smooth``'s keypoint filter, or None at strength 0; a model without keypoints is refused."""
    if strength == 0:
        return None
    if not config.relative_motion_possible:
        raise UserError(f"--smooth {strength:g}: {source} is a {config.motion_name} model, which has no keypoints "
                        f"to steady (use a circles or FOMM checkpoint)")
    return KeypointSmoother(strength, rate)


def best_frame(config, source: np.ndarray, video, prepare: Callable[[np.ndarray], np.ndarray],
               batch_size: int) -> int:
    """The driving frame whose pose is closest to the source's (FOMM demo's --find_best_frame): landmarks of the
    config's detector, each pose centred and scaled by its hull, compared over the landmarks found in both.

    FOMM animates forwards and backwards from that frame; since every generated frame depends only on the
    source, its own driving frame and the reference, one forward pass with that reference gives the same
    frames in order, and keeps the stream."""
    from modules.evaluation.landmarks import MetricsUnavailable, make_landmarker, normalised_pose

    try:
        landmarker = make_landmarker(config, config.dataset_params.size)
    except MetricsUnavailable as reason:
        raise UserError(f"--find_best_frame needs landmarks: {reason}") from None
    mine = landmarker.detect(source[None])
    if not mine.found[0].any():
        raise UserError(f"--find_best_frame: the {landmarker.name} detector finds no landmarks in the source image")
    best, best_distance, index = None, np.inf, 0
    for frames in tqdm(video.iter_frames(batch_size), total=-(-video.num_frames // batch_size), unit="batch",
                       desc="best frame", dynamic_ncols=True, leave=False):
        theirs = landmarker.detect(prepare(frames))
        for points, found in zip(theirs.points, theirs.found):
            both = found & mine.found[0]
            if both.sum() >= 3:                 # a hull needs three points
                difference = normalised_pose(points[both]) - normalised_pose(mine.points[0][both])
                distance = float((difference ** 2).sum(axis=1).mean())
                if distance < best_distance:
                    best, best_distance = index, distance
            index += 1
    if best is None:
        raise UserError(f"--find_best_frame: no frame of the driving video has three {landmarker.name} landmarks in "
                        f"common with the source image")
    print(f"best frame: {best} of {index} (normalised pose distance {best_distance:.4f})")
    return best
