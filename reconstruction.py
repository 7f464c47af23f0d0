"""Reconstruction: ``python run.py --mode reconstruction --checkpoint CKPT [--batch_size N]``.

The papers' protocol (perturbed-masks paper sec. 4.1): for each test video the first frame is the source and every frame
is a driving frame; the generated video is compared with the real one. Frames are streamed from the video in
batches (the source mask is computed once), so memory does not grow with a video's length except for the
png strip, which holds the whole video as pose-evaluation tools expect.

Writes ``<run folder>/reconstruction/`` (built beside what an earlier run wrote there and swapped in only when
complete, so an interrupted run keeps the earlier results):

    <video>.mp4         source | driving | driving mask | low-res | prediction, side by side
    png/<video>.png     the high-res prediction's frames side by side (the layout FOMM's tools read)
    metrics.json        {"protocol", "mean", "baselines", "skipped", "videos"}
    metrics.csv         one row per video

Metrics (modules/evaluation/scorer.py): L1, PSNR and SSIM always; AKD, MKR and AED when the config's landmark
detector (``metrics_params.landmarks``) can run here; metrics.json lists what was skipped and why. Every
metric is also given for the trivial baseline that copies the source frame, so a table shows what the model
adds.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from modules.core.outputs import check_data_folder, results_folder, results_path
from modules.core.pictures import side_by_side, to_uint8, write_strip
from modules.core.precision import autocast, autocast_dtype
from modules.data.video_io import VideoWriter
from modules.evaluation.scorer import FrameScorer, Track, repeat_landmarks, table_lines
from modules.inference.choice import dataset_frames
from modules.inference.pipeline import prepare_model
from modules.inference.results import row_means, write_results

CANDIDATES = ("prediction", "copy_source")


def reconstruct(checkpoint_path: str, device: torch.device, *, batch_size: int = 8,
                exclude_first_frame: Optional[bool] = None, num_videos: Optional[int] = None,
                config_path: Optional[str] = None, ablation: Optional[str] = None,
                engine: Optional[str] = None, precision: Optional[str] = None,
                data: Optional[str] = None, results_name: Optional[str] = None) -> dict[str, Any]:
    """Reconstruct the test videos of a checkpoint's dataset, or of ``data`` (its test/ folder, or every video
    of a folder without train/ and test/; results then go to ``reconstruction-<folder name>/``, or to
    ``results_name`` when given); returns what metrics.json holds."""
    if data is not None:
        check_data_folder(data)                  # before the model loads (the API's callers skip run.py's check)

    prepared = prepare_model(checkpoint_path, device, precision=precision, engine=engine, config_path=config_path,
                             ablation=ablation, calibrate=dataset_frames, channels_last=False, batch_size=batch_size)
    config, model, checkpoint, precision = prepared.config, prepared.model, prepared.checkpoint, prepared.precision
    params = config.reconstruction_params
    if exclude_first_frame is None:
        exclude_first_frame = params.exclude_first_frame
    if num_videos is None:
        num_videos = params.num_videos
    dataset = _test_videos(config, data)
    count = len(dataset) if num_videos is None else min(num_videos, len(dataset))   # not one too many (FOMM)
    name = results_name or ("reconstruction" if data is None else
                            "reconstruction-" + os.path.basename(os.path.abspath(data)))
    final_dir = results_path(checkpoint, name)
    # Built beside the earlier results and swapped in when complete: an interrupted run keeps them.
    with results_folder(final_dir) as out_dir:
        os.makedirs(os.path.join(out_dir, "png"))
        scorer = FrameScorer(config, config.dataset_params.size)
        per_video: dict[str, dict[str, Any]] = {}
        pooled: dict[str, list[float]] = {f"{who}_{name}": [] for who in CANDIDATES for name in scorer.metrics}
        progress = tqdm(total=sum(dataset.num_frames(i) for i in range(count)), unit="frame", dynamic_ncols=True)
        dtype = autocast_dtype(precision, device)
        with torch.inference_mode():
            for index in range(count):
                video = dataset.video(index)
                values = reconstruct_video(model, video, scorer, out_dir, config, device=device,
                                           dtype=dtype,
                                           batch_size=batch_size, exclude_first_frame=exclude_first_frame,
                                           progress=progress)
                per_video[video.name] = row_means(values)
                for key in pooled:
                    pooled[key] += values[key]
        progress.close()
        table = scorer.table(pooled, CANDIDATES)
        result = _write_metrics(out_dir, table, pooled, per_video, scorer, config, checkpoint, count,
                                exclude_first_frame)
    print(f"reconstruction of {count} videos ({result['protocol']['frames_counted']} frames) -> {final_dir}")
    for line in table_lines(table, scorer.skipped):
        print("  " + line)
    return result


def _test_videos(config, data: Optional[str]):
    """The model's own test split, or ``data``'s: its test/ folder, or all of it when it has no split."""
    from modules.data.dataset import FramesDataset

    if data is None:
        return FramesDataset.from_config(config.dataset_params, is_train=False)
    config.dataset_params.root_dir = os.path.abspath(data)
    config.dataset_params.pairs_list = None
    return FramesDataset.from_config(config.dataset_params, is_train=False, whole=True)


def reconstruct_video(model, video, scorer: FrameScorer, out_dir: str, config, *, device: torch.device,
                      batch_size: int, exclude_first_frame: bool, progress: tqdm,
                      dtype: Optional[torch.dtype] = None) -> dict[str, list[float]]:
    """One test video rebuilt from its frame 0: ``<name><format>`` (the side-by-side columns) and
    ``png/<name>.png`` (the prediction's frames) in ``out_dir``; returns the per-frame scores of the
    prediction and of copying the source ({"<candidate>_<metric>": values})."""
    from modules.data.dataset import frames_to_tensor

    size = config.dataset_params.size
    values: dict[str, list[float]] = {f"{who}_{name}": [] for who in CANDIDATES for name in scorer.metrics}
    strip = []
    state = source_landmarks = None
    tracks = {who: Track() for who in CANDIDATES}        # jitter and flicker span the batches
    with VideoWriter(os.path.join(out_dir, video.name + config.reconstruction_params.format),
                     fps=video.fps or 25) as writer:
        for number, frames in enumerate(video.iter_frames(batch_size)):
            driving = frames_to_tensor(frames).to(device)
            with autocast(device, dtype):
                if state is None:
                    state = model.encode_source(driving[:1])          # frame 0 is the source
                output = model.reconstruct(state, driving)
            if number == 0:
                source_landmarks = scorer.landmarks(driving[:1])
            source = state.image.expand_as(driving)
            first = 1 if exclude_first_frame and number == 0 else 0
            if first < len(driving):
                target = scorer.target(driving[first:], source=state.image)
                copies = None if source_landmarks is None else repeat_landmarks(source_landmarks, len(driving) - first)
                for who, frames_out, found in (("prediction", output.prediction[first:].float(), None),
                                               ("copy_source", source[first:], copies)):
                    for name, per_frame in scorer.score(frames_out, target, found, tracks[who]).items():
                        values[f"{who}_{name}"] += per_frame.tolist()
            writer.write(side_by_side(model.visual_columns(state, driving, output, detail=True), size))
            strip.append(to_uint8(output.prediction, size))
            progress.update(len(frames))
    write_strip(os.path.join(out_dir, "png", video.name + ".png"), np.concatenate(strip))
    return values


def _write_metrics(out_dir: str, table: dict, pooled: dict[str, list[float]], per_video: dict, scorer: FrameScorer,
                   config, checkpoint: dict, count: int, exclude_first_frame: bool) -> dict[str, Any]:
    """metrics.json (protocol, means, the copy-source baseline, per video) and metrics.csv (per video)."""
    result = {
        "protocol": {
            "source": "first frame of each test video", "driving": "every frame of the same video",
            "frames": "all frames except frame 0" if exclude_first_frame else "all frames, frame 0 included (FOMM)",
            "averaging": "over all counted frames of all videos (FOMM); landmark metrics over the frames where "
                         "they are defined", "videos": count,
            "frames_counted": len(pooled["prediction_l1"]), "frame_size": list(config.dataset_params.size),
            "checkpoint": checkpoint["path"], "step": checkpoint.get("step"),
            "dataset": config.dataset_params.root_dir, "landmarks": _describe_landmarks(scorer)},
        "mean": table["prediction"],
        "baselines": {"copy_source": table["copy_source"]},
        "skipped": scorer.skipped,
        "videos": per_video,
    }
    write_results(out_dir, result, per_video)
    return result


def _describe_landmarks(scorer: FrameScorer) -> Optional[dict[str, Any]]:
    """What detector the landmark metrics come from, and the units, for metrics.json."""
    if scorer.landmarker is None:
        return None
    described = {"detector": scorer.landmarker.name, "points": scorer.landmarker.num_points,
                 "akd_units": "pixels of a 256x256 frame"}
    info = getattr(scorer.landmarker, "info", None)
    if info:
        described["regressor"] = info
    return described
