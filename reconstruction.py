"""Reconstruction: ``python run.py --mode reconstruction --checkpoint CKPT [--batch_size N]``.

The papers' protocol (DESIGN.md sec. 5): for each test video the first frame is the source and every frame
is a driving frame; the generated video is compared with the real one. Frames are streamed from the video in
batches (the source mask is computed once), so memory does not grow with a video's length except for the
png strip, which holds the whole video as pose-evaluation tools expect.

Writes into ``<run folder>/reconstruction/`` (replacing what an earlier run wrote there):

    <video>.mp4         source | driving | driving mask | low-res | prediction, side by side
    png/<video>.png     the high-res prediction's frames side by side (the layout FOMM's tools read)
    metrics.json        {"protocol", "mean", "baselines", "skipped", "videos"}
    metrics.csv         one row per video

Metrics here: L1, PSNR and SSIM for the prediction and for the trivial baseline that copies the source
frame. The landmark metrics (AKD, MKR, AED) need detectors this version does not bundle; metrics.json says
that they were skipped and why.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

import logger as run_log
from modules.metrics import l1, psnr, ssim
from modules.video_io import VideoWriter

METRICS = {"l1": l1, "psnr": psnr, "ssim": ssim}
SKIPPED = {name: "landmark and identity metrics are not bundled in this version" for name in ("akd", "mkr", "aed")}


def reconstruct(checkpoint_path: str, device: torch.device, *, batch_size: int = 8,
                exclude_first_frame: Optional[bool] = None, num_videos: Optional[int] = None) -> dict[str, Any]:
    """Reconstruct the test videos of a checkpoint's dataset; returns what metrics.json holds."""
    from frames_dataset import FramesDataset, frames_to_tensor

    config, model, checkpoint = run_log.load_model(checkpoint_path, device)
    params = config.reconstruction_params
    if exclude_first_frame is None:
        exclude_first_frame = params.exclude_first_frame
    if num_videos is None:
        num_videos = params.num_videos
    dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
    count = len(dataset) if num_videos is None else min(num_videos, len(dataset))   # not one too many (FOMM)
    out_dir = run_log.fresh_results_dir(checkpoint, "reconstruction")
    size = config.dataset_params.size
    per_video: dict[str, dict[str, float]] = {}
    sums = {f"{who}_{name}": 0.0 for who in ("prediction", "copy_source") for name in METRICS}
    frames_counted = 0
    progress = tqdm(total=sum(dataset.num_frames(i) for i in range(count)), unit="frame", dynamic_ncols=True)
    with torch.inference_mode():
        for index in range(count):
            video = dataset.video(index)
            values = {key: [] for key in sums}
            strip = []
            state = None
            with VideoWriter(os.path.join(out_dir, video.name + params.format), fps=video.fps or 25) as writer:
                for number, frames in enumerate(video.iter_frames(batch_size)):
                    driving = frames_to_tensor(frames).to(device)
                    if state is None:
                        state = model.encode_source(driving[:1])          # frame 0 is the source
                    output = model.animate(state, driving)
                    source = state.image.expand_as(driving)
                    keep = slice(1 if exclude_first_frame and number == 0 else 0, None)
                    for name, metric in METRICS.items():
                        values[f"prediction_{name}"] += metric(output.prediction[keep], driving[keep]).tolist()
                        values[f"copy_source_{name}"] += metric(source[keep], driving[keep]).tolist()
                    columns = [source, driving, output.driving_mask, output.low_res_prediction, output.prediction]
                    writer.write(run_log.side_by_side(columns, size))
                    strip.append(run_log.to_uint8(output.prediction, size))
                    progress.update(len(frames))
            run_log.write_strip(os.path.join(out_dir, "png", video.name + ".png"), np.concatenate(strip))
            counted = len(values["prediction_l1"])
            per_video[video.name] = {"frames": counted} | {k: float(np.mean(v)) for k, v in values.items()}
            for key in sums:
                sums[key] += float(np.sum(values[key]))
            frames_counted += counted
    progress.close()
    mean = {name: sums[f"prediction_{name}"] / max(frames_counted, 1) for name in METRICS}
    result = {
        "protocol": {
            "source": "first frame of each test video", "driving": "every frame of the same video",
            "frames": "all frames except frame 0" if exclude_first_frame else "all frames, frame 0 included (FOMM)",
            "averaging": "over all counted frames of all videos (FOMM)", "videos": count,
            "frames_counted": frames_counted, "frame_size": list(size), "checkpoint": checkpoint["path"],
            "step": int(checkpoint["step"]), "dataset": config.dataset_params.root_dir},
        "mean": mean,
        "baselines": {"copy_source": {name: sums[f"copy_source_{name}"] / max(frames_counted, 1)
                                      for name in METRICS}},
        "skipped": SKIPPED,
        "videos": per_video,
    }
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=2)
    with open(os.path.join(out_dir, "metrics.csv"), "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        keys = ["frames"] + list(sums)
        writer.writerow(["video"] + keys)
        for name, row in per_video.items():
            writer.writerow([name] + [row[k] for k in keys])
    print(f"reconstruction of {count} videos ({frames_counted} frames) -> {out_dir}")
    print("  prediction   " + "  ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    print("  copy source  " + "  ".join(f"{k} {v:.4f}" for k, v in result["baselines"]["copy_source"].items()))
    return result
