"""Animation of any image by any video, or of a dataset's test pairs:

    python run.py --mode animate --checkpoint CKPT --source_image IMG --driving_video VID
                  [--result_video OUT] [--motion relative|absolute] [--adapt_scale] [--fit crop|resize]
                  [--crop auto|none|x,y,w,h] [--driving_crop auto|none|x,y,w,h] [--no_paste_back]
                  [--smooth STRENGTH] [--find_best_frame] [--batch_size N] [--visualize]
    python run.py --mode animate --checkpoint CKPT [--motion ...] [--adapt_scale] [--smooth S]  # the dataset's pairs

The pipeline is modules/inference/pipeline.py's (``animate_single``, ``stream_animation``; the web page and the
demos call it too); this front end adds the dataset's test pairs. Frames are decoded, generated in batches and
encoded as a stream: memory does not grow with the video's
length, and the source's part (mask, keypoints) is computed once. The result keeps the driving video's frame
count and fps and carries its audio track. Motion (FOMM's relative animation; keypoint-mask paper sec. 2.2):
heatmap checkpoints animate absolutely (the mask has no points to move); circles and FOMM checkpoints move
the source's keypoints by the driver's motion since its first frame (relative, the default; FOMM moves the
Jacobians too) or use the driver's keypoints as they are (absolute). With ``--find_best_frame`` the relative
motion is measured from the driving frame whose pose is closest to the source's instead. Official FOMM
checkpoints run with ``--config config/vox-256-fomm.yaml`` (or taichi) beside ``--checkpoint vox-cpk.pth.tar``.

The source image and the driving video are cropped to their subject first (``--crop auto``, modules/inference/crop.py)
and the result is pasted back into the image, so it has the image's size; ``--smooth`` steadies the driving
keypoints (modules/inference/smoothing.py).

Dataset mode on the synthetic data also scores each pair against its ground-truth animation (L1, PSNR, SSIM,
AKD with the keypoint regressor, and the steadiness measures jitter and flicker), beside the copy-source and
copy-driving baselines: ``metrics.json``.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from modules.core.outputs import results_folder, results_path
from modules.core.pictures import write_strip
from modules.data.dataset import FramesDataset, PairedDataset
from modules.data.video_io import VideoWriter, open_video
from modules.evaluation.scorer import FrameScorer, exact_joints, score_against_truth, table_lines
from modules.inference.choice import dataset_frames
from modules.inference.pipeline import (AnimationOptions, animate_single, choose_motion, prepare_model,  # noqa: F401
                                        steadier, stream_animation)
from modules.inference.results import pooled, row_means, write_results


def animate_dataset(checkpoint_path: str, *, device: torch.device, motion: Optional[str] = None,
                    adapt_scale: bool = False, batch_size: int = 8, num_pairs: Optional[int] = None,
                    precision: Optional[str] = None, config_path: Optional[str] = None,
                    ablation: Optional[str] = None, engine: Optional[str] = None, smooth: float = 0.0) -> str:
    """Animate the test pairs of the checkpoint's dataset (``pairs_list`` or seeded random pairs of different
    videos): source = a video's first frame, driving = another video. Writes ``animation/`` in the run folder:
    ``<source>__<driving>.mp4`` and ``png/<source>__<driving>.png`` (the prediction's frames side by side)."""
    prepared = prepare_model(checkpoint_path, device, precision=precision, engine=engine, config_path=config_path,
                             ablation=ablation, calibrate=dataset_frames, batch_size=batch_size)
    config, model, checkpoint, precision = prepared.config, prepared.model, prepared.checkpoint, prepared.precision
    motion, adapt_scale = choose_motion(config, motion, adapt_scale, checkpoint["path"])
    dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
    pairs = PairedDataset(dataset, num_pairs or config.animate_params.num_pairs, seed=0)
    final_dir = results_path(checkpoint, "animation")
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
                write_strip(os.path.join(out_dir, "png", name + ".png"), prediction)
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
        print(f"  against the ground-truth animation ({len(scores)} of {len(pairs)} pairs have one):")
        for line in table_lines(table, scorer.skipped):
            print("    " + line)
    else:
        # A cross-identity animation of real video has no true frame to compare with (the papers report such
        # results as pictures and user studies); the measurable protocol is reconstruction.
        truth = os.path.join(config.dataset_params.root_dir, "animation-gt")
        print(f"  no metrics: no pair has a ground-truth animation ({truth}/<source>__<driving>/, which only the "
              f"synthetic dataset has); for L1, AKD, MKR and AED run --mode reconstruction")
    return final_dir


def _write_animation_metrics(out_dir: str, scores: dict[str, dict[str, list[float]]], scorer: FrameScorer,
                             motion: str, adapt_scale: bool, checkpoint: dict) -> dict[str, dict[str, float]]:
    """Write metrics.json; returns the table (candidate -> metric -> mean) to print."""
    table = scorer.table(pooled(scores), ("prediction", "copy_source", "copy_driving"))
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
              "pairs": {name: row_means(row) for name, row in scores.items()}}
    write_results(out_dir, result)
    return table
