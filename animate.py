"""Animation of any image by any video, or of a dataset's test pairs:

    python run.py --mode animate --checkpoint CKPT --source_image IMG --driving_video VID
                  [--result_video OUT] [--motion relative|absolute] [--adapt_scale] [--fit crop|resize]
                  [--crop auto|none|x,y,w,h] [--driving_crop auto|none|x,y,w,h] [--no_paste_back]
                  [--smooth STRENGTH] [--find_best_frame] [--batch_size N] [--visualize]
    python run.py --mode animate --checkpoint CKPT [--motion ...] [--adapt_scale] [--smooth S]  # the dataset's pairs

Frames are decoded, generated in batches and encoded as a stream: memory does not grow with the video's
length, and the source's part (mask, keypoints) is computed once. The result keeps the driving video's frame
count and fps and carries its audio track. Motion (FOMM's relative animation; keypoint-mask paper sec. 2.2):
heatmap checkpoints animate absolutely (the mask has no points to move); circles and FOMM checkpoints move
the source's keypoints by the driver's motion since its first frame (relative, the default; FOMM moves the
Jacobians too) or use the driver's keypoints as they are (absolute). With ``--find_best_frame`` the relative
motion is measured from the driving frame whose pose is closest to the source's instead. Official FOMM
checkpoints run with ``--config config/vox-256-fomm.yaml`` (or taichi) beside ``--checkpoint vox-cpk.pth.tar``.

The source image and the driving video are cropped to their subject first (``--crop auto``, modules/crop.py)
and the result is pasted back into the image, so it has the image's size; ``--smooth`` steadies the driving
keypoints (modules/smoothing.py).

Dataset mode on the synthetic data also scores each pair against its ground-truth animation (L1, PSNR, SSIM,
AKD with the keypoint regressor, and the steadiness measures jitter and flicker), beside the copy-source and
copy-driving baselines: ``metrics.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

import logger as run_log
from frames_dataset import frames_to_tensor
from modules.crop import CropPlan, crop_to, parse_box, plan_crops
from modules.engines import dataset_frames, load_for_inference
from modules.errors import UserError
from modules.evaluation import FrameScorer, exact_joints, frame_mean, score_against_truth, table_lines
from modules.precision import autocast, autocast_dtype, inference_precision
from modules.smoothing import KeypointSmoother
from modules.outputs import check_output_file, default_result, results_folder, side_by_side_path
from modules.video_io import WRITABLE_EXTENSIONS, VideoWriter, load_image, open_video, resize_frame

FITS = ("crop", "resize")
CALIBRATION_FRAMES = 8                 # --mixed_precision int8: the driving frames it calibrates on


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
                     visual: Optional[list] = None, side_by_side: Optional[VideoWriter] = None,
                     smooth: Optional[KeypointSmoother] = None,
                     paste: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
    """Generate the frames driven by ``batches`` (uint8 (n, H, W, 3), already fitted) into ``writer``, and
    source | driving | mask | result into ``side_by_side`` if given.
    Relative motion is measured from ``reference`` (a fitted driving frame), by default the first frame.
    ``strip`` collects the predictions (uint8 (n, H, W, 3) per batch), ``visual`` the side-by-side frames
    (uint8 (n, H, columns*W, 3) per batch). ``smooth`` steadies the driving keypoints (its state runs on
    from batch to batch); ``paste`` turns each batch of predictions into the frames ``writer`` gets (the
    crop pasted back into the source photo, modules/crop.py)."""
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
        prediction = run_log.to_uint8(output.prediction, size)
        shown = run_log.side_by_side(model.visual_columns(state, driving, output), size) \
            if side_by_side is not None or visual is not None else None
        if writer is not None:
            writer.write(prediction if paste is None else paste(prediction))
        if side_by_side is not None:
            side_by_side.write(shown)
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
    ``--driving_crop`` choose (modules/crop.py; planned once, on the first call that has the config) or, with
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


def animate_single(checkpoint_path: str, source_image: str, driving_video: str, *, device: torch.device,
                   result_video: Optional[str] = None, motion: Optional[str] = None, adapt_scale: bool = False,
                   fit: str = "crop", batch_size: int = 8, visualize: bool = False,
                   precision: Optional[str] = None, find_best_frame: bool = False,
                   config_path: Optional[str] = None, ablation: Optional[str] = None,
                   overwrite: bool = False, engine: Optional[str] = None, crop: str = "auto",
                   driving_crop: str = "auto", paste: bool = True, smooth: float = 0.0,
                   report: Optional[Callable[[int, int], None]] = None) -> str:
    """Animate ``source_image`` by ``driving_video`` into ``result_video`` (default ``<source>-animated.mp4``;
    an existing file is refused unless ``overwrite``); with ``visualize`` also ``<result>-side-by-side.mp4``.
    The model animates the crops ``crop``/``driving_crop`` choose; with ``paste`` the result is the source
    photo with the animated crop pasted back. ``report(done, total)`` hears of every batch written (the web
    page's progress bar). Returns the result's path. Outputs are checked before anything is loaded
    (modules/outputs.py)."""
    result_video = result_video or default_result(source_image)
    side_path = _check_arguments(result_video, (source_image, driving_video, checkpoint_path, config_path),
                                 overwrite=overwrite, visualize=visualize, fit=fit,
                                 crops=(("--crop", crop), ("--driving_crop", driving_crop)))
    frames = Frames(source_image, driving_video, fit, crop, driving_crop)
    precision, precision_line = inference_precision(precision, device)
    config, model, checkpoint, engine_line = load_for_inference(
        checkpoint_path, device, config_path=config_path, ablation=ablation, engine=engine, precision=precision,
        calibrate=frames.calibration)
    print(precision_line + "; " + engine_line)
    model.to(memory_format=torch.channels_last)
    motion, adapt_scale = choose_motion(config, motion, adapt_scale, checkpoint["path"])
    if find_best_frame and motion != "relative":
        raise UserError("--find_best_frame picks the reference frame of relative motion; absolute motion has "
                        "none (use a circles or FOMM checkpoint with --motion relative)")
    smoother = steadier(config, smooth, frames.video.fps or 25.0, checkpoint["path"])
    size = config.dataset_params.size
    source, video = frames.source(config), frames.video
    reference = None
    if find_best_frame:
        best = best_frame(config, source, video, lambda f: frames.driving(config, f), batch_size)
        reference = frames.driving(config, video.read([best]))[0]
    fps = video.fps or 25.0
    batches = (frames.driving(config, chunk) for chunk in video.iter_frames(batch_size))
    paster = frames.planned(config).paster(frames.photo, paste)
    progress = ReportingBar(report, total=video.num_frames, unit="frame", dynamic_ncols=True)
    # A failure or a signal before the end removes both partial files: neither name gets a half-written video.
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        writer = stack.enter_context(VideoWriter(result_video, fps=fps, audio_from=driving_video))
        side = stack.enter_context(VideoWriter(side_path, fps=fps, audio_from=driving_video)) if side_path else None
        stream_animation(model, source, batches, writer, size=size, device=device, motion=motion,
                         adapt_scale=adapt_scale, progress=progress, precision=precision, reference=reference,
                         side_by_side=side, smooth=smoother, paste=paster,
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
    if fit not in FITS:
        raise UserError(f"--fit {fit!r}: expected one of {', '.join(FITS)}")
    for flag, value in crops:
        if value not in ("auto", "none"):
            parse_box(value, flag)                              # a malformed box fails before loading
    return side_path


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
    from modules.landmarks import MetricsUnavailable, make_landmarker, normalised_pose

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


def animate_dataset(checkpoint_path: str, *, device: torch.device, motion: Optional[str] = None,
                    adapt_scale: bool = False, batch_size: int = 8, num_pairs: Optional[int] = None,
                    precision: Optional[str] = None, config_path: Optional[str] = None,
                    ablation: Optional[str] = None, engine: Optional[str] = None, smooth: float = 0.0) -> str:
    """Animate the test pairs of the checkpoint's dataset (``pairs_list`` or seeded random pairs of different
    videos): source = a video's first frame, driving = another video. Writes ``animation/`` in the run folder:
    ``<source>__<driving>.mp4`` and ``png/<source>__<driving>.png`` (the prediction's frames side by side)."""
    from frames_dataset import FramesDataset, PairedDataset

    precision, precision_line = inference_precision(precision, device)
    config, model, checkpoint, engine_line = load_for_inference(
        checkpoint_path, device, config_path=config_path, ablation=ablation, engine=engine, precision=precision,
        calibrate=dataset_frames)
    print(precision_line + "; " + engine_line)
    model.to(memory_format=torch.channels_last)
    motion, adapt_scale = choose_motion(config, motion, adapt_scale, checkpoint["path"])
    dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
    pairs = PairedDataset(dataset, num_pairs or config.animate_params.num_pairs, seed=0)
    final_dir = run_log.results_path(checkpoint, "animation")
    # Built beside the earlier results and swapped in when complete: an interrupted run keeps them.
    relative_jacobian = config.animate_params.normalization_params.use_relative_jacobian
    with results_folder(final_dir) as out_dir:
        os.makedirs(os.path.join(out_dir, "png"))
        size = config.dataset_params.size
        progress = tqdm(total=sum(dataset.num_frames(pairs.pair(i)[1]) for i in range(len(pairs))),
                        unit="frame", dynamic_ncols=True)
        scorer = None                       # built on the first pair that has a ground truth
        scores: dict[str, dict[str, list[float]]] = {}
        with torch.inference_mode():
            for index in range(len(pairs)):
                source_index, driving_index = pairs.pair(index)
                name = f"{dataset.names[source_index]}__{dataset.names[driving_index]}"
                driving = dataset.video(driving_index)
                source = dataset.video(source_index).read([0])[0]
                strip: list[np.ndarray] = []
                with VideoWriter(os.path.join(out_dir, name + config.animate_params.format),
                                 fps=driving.fps or 25.0) as writer:
                    stream_animation(model, source, driving.iter_frames(batch_size), writer, size=size,
                                     device=device, motion=motion, adapt_scale=adapt_scale, progress=progress,
                                     strip=strip, precision=precision, use_relative_jacobian=relative_jacobian,
                                     smooth=steadier(config, smooth, driving.fps or 25.0, checkpoint["path"]))
                prediction = np.concatenate(strip)                                          # (T, H, W, 3)
                run_log.write_strip(os.path.join(out_dir, "png", name + ".png"), prediction)
                truth = os.path.join(config.dataset_params.root_dir, "animation-gt", name)
                if os.path.isdir(truth):
                    scorer = scorer or FrameScorer(config, size)
                    scores[name] = score_against_truth(scorer, prediction, source, driving,
                                                       open_video(truth, size), batch_size, exact_joints(truth))
        progress.close()
        if scores:
            table = _write_animation_metrics(out_dir, scores, scorer, motion, adapt_scale, checkpoint)
    scaled = ", movement scale adapted" if adapt_scale else ""
    print(f"animation of {len(pairs)} pairs ({motion} motion{scaled}) -> {final_dir}")
    if scores:
        print("  against the ground-truth animation:")
        for line in table_lines(table, scorer.skipped):
            print("    " + line)
    return final_dir


def _write_animation_metrics(out_dir: str, scores: dict[str, dict[str, list[float]]], scorer: FrameScorer,
                             motion: str, adapt_scale: bool, checkpoint: dict) -> dict[str, dict[str, float]]:
    """Write metrics.json; returns the table (candidate -> metric -> mean) to print."""
    pooled: dict[str, list[float]] = {}
    for row in scores.values():
        for key, values in row.items():
            pooled.setdefault(key, []).extend(values)
    table = scorer.table(pooled, ("prediction", "copy_source", "copy_driving"))
    frames = sum(len(row["prediction_l1"]) for row in scores.values())
    result = {"protocol": {"target": "the synthetic dataset's ground-truth animation (source identity, driver's "
                                     "pose)", "averaging": "over all frames of all pairs", "pairs": len(scores),
                           "frames": frames, "motion": motion, "adapt_scale": adapt_scale,
                           "checkpoint": checkpoint["path"],
                           "step": checkpoint.get("step"),
                           "landmarks": None if scorer.landmarker is None else scorer.landmarker.name,
                           "akd_units": "pixels of a 256x256 frame"},
              "mean": table["prediction"],
              "baselines": {who: table[who] for who in ("copy_source", "copy_driving")},
              "skipped": scorer.skipped,
              "pairs": {name: {"frames": len(row["prediction_l1"])} | {key: frame_mean(v) for key, v in row.items()}
                        for name, row in scores.items()}}
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=2)
    return table
