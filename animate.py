"""Animation of any image by any video:

    python run.py --mode animate --checkpoint CKPT --source_image IMG --driving_video VID
                  [--result_video OUT] [--motion relative|absolute] [--adapt_scale] [--fit crop|resize]
                  [--batch_size N] [--visualize]

Frames are decoded, generated in batches and encoded as a stream: memory does not grow with the video's
length, and the source mask is computed once. The result keeps the driving video's frame count and fps and
carries its audio track. Motion (DESIGN.md sec. 3): heatmap checkpoints animate absolutely (the mask has no
points to move); circles checkpoints move the source's keypoints by the driver's motion since its first frame
(relative, the default) or use the driver's keypoints as they are (absolute).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

import logger as run_log
from frames_dataset import frames_to_tensor
from modules.errors import UserError
from modules.motion import relative_keypoints
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


def animate_single(checkpoint_path: str, source_image: str, driving_video: str, *, device: torch.device,
                   result_video: Optional[str] = None, motion: Optional[str] = None, adapt_scale: bool = False,
                   fit: str = "crop", batch_size: int = 8, visualize: bool = False) -> str:
    """Animate ``source_image`` by ``driving_video``; returns the result's path."""
    config, model, checkpoint = run_log.load_model(checkpoint_path, device)
    kind = config.model_params.mask_params.kind
    normalization = config.animate_params.normalization_params
    if motion is None:
        motion = "relative" if kind == "circles" and normalization.use_relative_movement else "absolute"
    if motion == "relative" and kind != "circles":
        raise UserError(f"--motion relative: {checkpoint['path']} has a {kind} mask, which has no keypoints to "
                        f"move; it animates absolutely (use a circles checkpoint for relative motion)")
    if adapt_scale and motion != "relative":
        raise UserError("--adapt_scale scales relative motion; it needs --motion relative and a circles checkpoint")
    if fit not in FITS:
        raise UserError(f"--fit {fit!r}: expected one of {', '.join(FITS)}")
    size = config.dataset_params.size
    source = fit_frame(load_image(source_image), size, fit)
    video = open_video(driving_video)
    result_video = result_video or os.path.splitext(os.path.basename(source_image))[0] + "-animated.mp4"
    fps = video.fps or 25.0

    with torch.inference_mode(), VideoWriter(result_video, fps=fps, audio_from=driving_video) as writer:
        state = model.encode_source(frames_to_tensor(source[None]).to(device))     # once for the whole video
        initial = None
        progress = tqdm(total=video.num_frames, unit="frame", dynamic_ncols=True)
        for frames in video.iter_frames(batch_size):
            driving = frames_to_tensor(np.stack([fit_frame(f, size, fit) for f in frames])).to(device)
            if motion == "relative":
                kp_driving = model.mask(driving).keypoints
                if initial is None:
                    initial = kp_driving[:1]
                moved = relative_keypoints(state.keypoints.expand_as(kp_driving), kp_driving,
                                           initial.expand_as(kp_driving), adapt_movement_scale=adapt_scale)
                driving_mask = model.mask.mask_from_keypoints(moved.value, size)
                batch = len(driving)
                output = model.generator(state.image.expand(batch, -1, -1, -1),
                                         state.mask.expand(batch, -1, -1, -1), driving_mask)
            else:
                output = model.animate(state, driving)
            if visualize:
                columns = [state.image.expand_as(driving), driving, output.driving_mask, output.prediction]
                writer.write(run_log.side_by_side(columns, size))
            else:
                writer.write(run_log.to_uint8(output.prediction, size))
            progress.update(len(frames))
        progress.close()
    print(f"{result_video}: {writer.frames} frames at {fps:g} fps ({motion} motion"
          f"{', audio carried over' if writer.audio_from else ''})")
    return result_video
