"""Animation of any image by any video, or of a dataset's test pairs:

    python run.py --mode animate --checkpoint CKPT --source_image IMG --driving_video VID
                  [--result_video OUT] [--motion relative|absolute] [--adapt_scale] [--fit crop|resize]
                  [--batch_size N] [--visualize]
    python run.py --mode animate --checkpoint CKPT [--motion ...] [--adapt_scale]     # the dataset's pairs

Frames are decoded, generated in batches and encoded as a stream: memory does not grow with the video's
length, and the source mask is computed once. The result keeps the driving video's frame count and fps and
carries its audio track. Motion (DESIGN.md sec. 3): heatmap checkpoints animate absolutely (the mask has no
points to move); circles checkpoints move the source's keypoints by the driver's motion since its first frame
(relative, the default) or use the driver's keypoints as they are (absolute).
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

import logger as run_log
from frames_dataset import frames_to_tensor
from modules.errors import UserError
from modules.motion import relative_keypoints
from modules.precision import autocast, autocast_dtype
from modules.video_io import VideoWriter, load_image, open_video, resize_frame

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


def _choose_motion(kind: str, config, motion: Optional[str], adapt_scale: bool, source: str) -> str:
    """The motion a checkpoint animates with: heatmap absolute; circles relative unless told otherwise."""
    if motion is None:
        relative = kind == "circles" and config.animate_params.normalization_params.use_relative_movement
        motion = "relative" if relative else "absolute"
    if motion == "relative" and kind != "circles":
        raise UserError(f"--motion relative: {source} has a {kind} mask, which has no keypoints to move; it "
                        f"animates absolutely (use a circles checkpoint for relative motion)")
    if adapt_scale and motion != "relative":
        raise UserError("--adapt_scale scales relative motion; it needs --motion relative and a circles checkpoint")
    return motion


def _stream(model, source: np.ndarray, batches: Iterator[np.ndarray], writer: VideoWriter, *, size: tuple[int, int],
            device: torch.device, motion: str, adapt_scale: bool, visualize: bool, progress: tqdm,
            strip: Optional[list] = None, precision: Optional[str] = None) -> None:
    """Generate the frames driven by ``batches`` (uint8 (n, H, W, 3), already fitted) into ``writer``."""
    layout = torch.channels_last            # NHWC convolutions: faster on CPU and on tensor cores
    dtype = autocast_dtype(precision, device)
    with autocast(device, dtype):
        state = model.encode_source(frames_to_tensor(source[None]).to(device, memory_format=layout))   # once
    initial = None                          # relative motion: the driver's first-frame keypoints
    for frames in batches:
        driving = frames_to_tensor(frames).to(device, memory_format=layout)
        with autocast(device, dtype):
            if motion == "absolute":
                output = model.animate(state, driving)
            else:
                output, initial = _animate_relative(model, state, driving, initial, adapt_scale, size)
        prediction = run_log.to_uint8(output.prediction, size)
        if visualize:
            writer.write(run_log.side_by_side([state.image.expand_as(driving), driving, output.driving_mask,
                                               output.prediction], size))
        else:
            writer.write(prediction)
        if strip is not None:
            strip.append(prediction)
        progress.update(len(frames))


def _animate_relative(model, state, driving: torch.Tensor, initial: Optional[torch.Tensor], adapt_scale: bool,
                      size: tuple[int, int]):
    """One batch moved relatively -> (GeneratorOutput, the initial driving keypoints (1, K, 2)); ``initial``
    None means this batch starts the video, and its first frame becomes the reference."""
    kp_driving = model.mask(driving).keypoints
    if initial is None:
        initial = kp_driving[:1]
    moved = relative_keypoints(state.keypoints.expand_as(kp_driving).float(), kp_driving.float(),
                               initial.expand_as(kp_driving).float(), adapt_movement_scale=adapt_scale)
    batch = len(driving)
    output = model.generator(state.image.expand(batch, -1, -1, -1), state.mask.expand(batch, -1, -1, -1),
                             model.mask.mask_from_keypoints(moved.value, size))
    return output, initial


def animate_single(checkpoint_path: str, source_image: str, driving_video: str, *, device: torch.device,
                   result_video: Optional[str] = None, motion: Optional[str] = None, adapt_scale: bool = False,
                   fit: str = "crop", batch_size: int = 8, visualize: bool = False,
                   precision: Optional[str] = None) -> str:
    """Animate ``source_image`` by ``driving_video``; returns the result's path."""
    config, model, checkpoint = run_log.load_model(checkpoint_path, device)
    model.to(memory_format=torch.channels_last)
    motion = _choose_motion(config.model_params.mask_params.kind, config, motion, adapt_scale, checkpoint["path"])
    if fit not in FITS:
        raise UserError(f"--fit {fit!r}: expected one of {', '.join(FITS)}")
    size = config.dataset_params.size
    source = fit_frame(load_image(source_image), size, fit)
    video = open_video(driving_video)
    result_video = result_video or os.path.splitext(os.path.basename(source_image))[0] + "-animated.mp4"
    fps = video.fps or 25.0
    batches = (np.stack([fit_frame(frame, size, fit) for frame in frames]) for frames in video.iter_frames(batch_size))
    progress = tqdm(total=video.num_frames, unit="frame", dynamic_ncols=True)
    with torch.inference_mode(), VideoWriter(result_video, fps=fps, audio_from=driving_video) as writer:
        _stream(model, source, batches, writer, size=size, device=device, motion=motion, adapt_scale=adapt_scale,
                visualize=visualize, progress=progress, precision=precision)
    progress.close()
    print(f"{result_video}: {writer.frames} frames at {fps:g} fps ({motion} motion"
          f"{', audio carried over' if writer.audio_from else ''})")
    return result_video


def animate_dataset(checkpoint_path: str, *, device: torch.device, motion: Optional[str] = None,
                    adapt_scale: bool = False, batch_size: int = 8, num_pairs: Optional[int] = None,
                    precision: Optional[str] = None) -> str:
    """Animate the test pairs of the checkpoint's dataset (``pairs_list`` or seeded random pairs of different
    videos): source = a video's first frame, driving = another video. Writes ``animation/`` in the run folder:
    ``<source>__<driving>.mp4`` and ``png/<source>__<driving>.png`` (the prediction's frames side by side)."""
    from frames_dataset import FramesDataset, PairedDataset

    config, model, checkpoint = run_log.load_model(checkpoint_path, device)
    model.to(memory_format=torch.channels_last)
    motion = _choose_motion(config.model_params.mask_params.kind, config, motion, adapt_scale, checkpoint["path"])
    dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
    pairs = PairedDataset(dataset, num_pairs or config.animate_params.num_pairs, seed=0)
    out_dir = run_log.fresh_results_dir(checkpoint, "animation")
    size = config.dataset_params.size
    progress = tqdm(total=sum(dataset.num_frames(pairs.pair(i)[1]) for i in range(len(pairs))), unit="frame",
                    dynamic_ncols=True)
    scores: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for index in range(len(pairs)):
            source_index, driving_index = pairs.pair(index)
            name = f"{dataset.names[source_index]}__{dataset.names[driving_index]}"
            driving = dataset.video(driving_index)
            strip: list[np.ndarray] = []
            with VideoWriter(os.path.join(out_dir, name + config.animate_params.format),
                             fps=driving.fps or 25.0) as writer:
                _stream(model, dataset.video(source_index).read([0])[0], driving.iter_frames(batch_size), writer,
                        size=size, device=device, motion=motion, adapt_scale=adapt_scale, visualize=False,
                        progress=progress, strip=strip, precision=precision)
            prediction = np.concatenate(strip)                                          # (T, H, W, 3)
            run_log.write_strip(os.path.join(out_dir, "png", name + ".png"), prediction)
            truth = os.path.join(config.dataset_params.root_dir, "animation-gt", name)
            if os.path.isdir(truth):
                scores[name] = _score_against_truth(prediction, dataset.video(source_index).read([0])[0],
                                                    driving.read_all(), open_video(truth, size).read_all())
    progress.close()
    print(f"animation of {len(pairs)} pairs ({motion} motion) -> {out_dir}")
    if scores:
        _write_animation_metrics(out_dir, scores, motion, checkpoint)
    return out_dir


def _score_against_truth(prediction: np.ndarray, source: np.ndarray, driving: np.ndarray,
                         truth: np.ndarray) -> dict[str, float]:
    """L1 and SSIM of the prediction and of the two trivial baselines against the ground-truth animation
    (the synthetic dataset's source identity moved by the driver's pose), averaged over frames."""
    from modules.metrics import l1, ssim

    count = min(len(prediction), len(truth), len(driving))
    target = frames_to_tensor(truth[:count])
    candidates = {"prediction": prediction[:count], "copy_source": np.repeat(source[None], count, axis=0),
                  "copy_driving": driving[:count]}
    scores = {"frames": count}
    for who, frames in candidates.items():
        frames = frames_to_tensor(frames)
        scores[f"{who}_l1"] = l1(frames, target).mean().item()
        scores[f"{who}_ssim"] = ssim(frames, target).mean().item()
    return scores


def _write_animation_metrics(out_dir: str, scores: dict, motion: str, checkpoint: dict) -> None:
    keys = [k for k in next(iter(scores.values())) if k != "frames"]
    total = sum(row["frames"] for row in scores.values())
    mean = {k: sum(row[k] * row["frames"] for row in scores.values()) / total for k in keys}
    result = {"protocol": {"target": "the synthetic dataset's ground-truth animation (source identity, driver's "
                                     "pose)", "averaging": "over all frames of all pairs", "pairs": len(scores),
                           "frames": total, "motion": motion, "checkpoint": checkpoint["path"],
                           "step": int(checkpoint["step"])},
              "mean": {"l1": mean["prediction_l1"], "ssim": mean["prediction_ssim"]},
              "baselines": {who: {"l1": mean[f"{who}_l1"], "ssim": mean[f"{who}_ssim"]}
                            for who in ("copy_source", "copy_driving")},
              "skipped": {"akd": "needs the keypoint regressor of the synthetic dataset (next stage)"},
              "pairs": scores}
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=2)
    print(f"  against the ground-truth animation: prediction l1 {mean['prediction_l1']:.4f} ssim "
          f"{mean['prediction_ssim']:.4f}; copy source l1 {mean['copy_source_l1']:.4f}; copy driving l1 "
          f"{mean['copy_driving_l1']:.4f}")
