"""How well a trained detector's keypoints follow the synthetic figures' joints.

    python scripts/measure/keypoints_vs_joints.py --checkpoint log/tiny-fomm-<ts> [--split test] [--random] [--config CONFIG]

For every frame of the split (default: the test identities, never trained on) the detector's K keypoints are
compared with the ground-truth joints (``<root>/keypoints/<split>/<video>.npy``), in pixels of the frame:

* nearest:  mean distance from each keypoint to the nearest joint in that frame;
* tracking: each keypoint is assigned the one joint it is closest to on average over all frames, and the
  mean distance to that joint is reported: small only if the keypoint stays on the same body part;
* motion explained: per keypoint, the best over joints of 1 - sum |k - j|^2 / sum |j|^2 with k and j the
  keypoint's and the joint's trajectories minus their mean in each video: 1 when the keypoint moves exactly
  as a joint does, 0 for a keypoint that stands still (or moves at random);
* pose from keypoints: the unsupervised-landmark papers' "forward" error. A linear map from the K keypoints
  to all J joints is fitted by least squares on the train split and applied to the test split; the mean
  joint error in pixels is reported beside that of the mean pose (every joint at its train-split mean). It
  is small only if the keypoints carry the whole pose, limbs included, not only where the torso is.

Distances alone flatter a detector that has learned nothing: random weights put every keypoint near the
centre of the frame, where the figure's pelvis is, a few pixels from a joint in every frame. The motion
figure tells the two apart. ``--random`` measures the config's networks with seeded random weights, the
reference. Works with any checkpoint or model file of this project that holds a ``kp_detector`` (a
FOMM-format checkpoint with ``--config``). For a labelled detector (``family: detector``) it also prints the
mean distance of each keypoint to the joint it was trained on ("labelled joint"); on any labelled dataset
(visibility, frame sizes, real videos) scripts/measure/detector_error.py measures that per video.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modules.core.cli import OneLineArgumentParser, exit_status  # noqa: E402
from modules.core.errors import UserError


def detector_values(detector: torch.nn.Module, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> the detector's keypoints (T, K, 2) in [-1, 1], x first (what its loss sees),
    ``batch_size`` frames at a time on the detector's device."""
    from modules.data.dataset import frames_to_tensor

    out = []
    device = next(detector.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            batch = frames_to_tensor(frames[start:start + batch_size]).to(device)
            out.append(detector(batch).value.float().cpu().numpy())
    return np.concatenate(out)


def detector_keypoints(detector: torch.nn.Module, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> keypoints (T, K, 2) in pixels (pixel centres at 0 .. side-1)."""
    height, width = frames.shape[1:3]
    value = detector_values(detector, frames, batch_size)
    return np.stack([(value[..., 0] + 1) / 2 * (width - 1), (value[..., 1] + 1) / 2 * (height - 1)], axis=-1)


def compare(keypoints: list[np.ndarray], joints: list[np.ndarray], joint_names: list[str]) -> dict:
    """Per video keypoints (T, K, 2) and joints (T, J, 2) in pixels -> the three figures (module docstring)."""
    everything_k, everything_j = np.concatenate(keypoints), np.concatenate(joints)
    distances = np.linalg.norm(everything_k[:, :, None] - everything_j[:, None], axis=-1)    # (N, K, J)
    mean_per_pair = distances.mean(axis=0)                                                   # (K, J)
    assigned = mean_per_pair.argmin(axis=1)
    # trajectories about each video's mean position
    moving_k = np.concatenate([k - k.mean(axis=0) for k in keypoints])                       # (N, K, 2)
    moving_j = np.concatenate([j - j.mean(axis=0) for j in joints])                          # (N, J, 2)
    residual = ((moving_k[:, :, None] - moving_j[:, None]) ** 2).sum(axis=(0, 3))            # (K, J)
    explained = 1 - residual / (moving_j ** 2).sum(axis=(0, 2))[None]                         # (K, J)
    best = explained.argmax(axis=1)
    return {"nearest_px": float(distances.min(axis=2).mean()),
            "tracking_px": float(mean_per_pair[np.arange(len(assigned)), assigned].mean()),
            "motion_explained": float(explained[np.arange(len(best)), best].mean()),
            "per_keypoint": [(joint_names[j], float(mean_per_pair[k, j]), joint_names[b], float(explained[k, b]))
                             for k, (j, b) in enumerate(zip(assigned, best))]}


def regress_joints(train_keypoints: np.ndarray, train_joints: np.ndarray, test_keypoints: np.ndarray,
                   test_joints: np.ndarray, ridge: float = 1e-3) -> dict:
    """Keypoints (N, K, 2) -> joints (N, J, 2) by a linear map with bias, fitted on train, measured on test.

    Returns the test split's mean joint error in pixels ("pose_px") and that of the mean pose ("mean_pose_px").
    A small ridge keeps the fit defined when keypoints coincide (an untrained detector puts them all in one place).
    """
    def features(keypoints: np.ndarray) -> np.ndarray:
        flat = keypoints.reshape(len(keypoints), -1).astype(np.float64)
        return np.concatenate([flat, np.ones((len(flat), 1))], axis=1)

    x, y = features(train_keypoints), train_joints.reshape(len(train_joints), -1).astype(np.float64)
    weights = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
    predicted = (features(test_keypoints) @ weights).reshape(test_joints.shape)
    mean_pose = train_joints.mean(axis=0, keepdims=True)
    return {"pose_px": float(np.linalg.norm(predicted - test_joints, axis=-1).mean()),
            "mean_pose_px": float(np.linalg.norm(mean_pose - test_joints, axis=-1).mean())}


def load_detector(checkpoint_path: str, config_path: Optional[str] = None,
                  random: bool = False) -> tuple[Any, torch.nn.Module, dict]:
    """(config, FOMM's KPDetector in eval mode, checkpoint with its ``path``) from a checkpoint of this project,
    its run folder, a model file, or a FOMM-format checkpoint with ``config_path``. ``config_path`` overrides
    the config a checkpoint holds (relative data paths are then looked up from the config, else from the
    checkpoint); ``random`` gives the config's detector seeded random weights instead (the reference)."""
    from modules.config.loading import config_from_dict, load_config, resolve_data_paths
    from modules.core.errors import CheckpointError
    from modules.core.files import first_items, read_checkpoint, resolve_checkpoint
    from modules.nets.keypoint_detector import KPDetector, load_detector_state

    path = resolve_checkpoint(checkpoint_path)
    checkpoint = dict(read_checkpoint(path), path=path)
    if config_path is not None:
        config = load_config(config_path)
    elif isinstance(checkpoint.get("config"), dict):
        config = config_from_dict(checkpoint["config"], f"{path}:config")
    else:
        raise UserError(f"{path}: holds no config (a FOMM-format checkpoint?); pass --config with the settings of "
                        f"its detector")
    resolve_data_paths(config, config_path or path)
    if not config.record.reads_detector:
        raise UserError(f"{config.path}: a {config.motion_name} config has no FOMM keypoint detector to measure")
    # The seed makes --random the same reference on every run.
    torch.manual_seed(config.train_params.seed)
    detector = KPDetector(**config.model_params.detector_kwargs())
    if not random:
        if not isinstance(checkpoint.get("kp_detector"), dict):
            raise CheckpointError(f"{path}: no keypoint detector (no 'kp_detector' state dict; found: "
                                  f"{first_items(sorted(map(str, checkpoint)))})")
        load_detector_state(detector, checkpoint["kp_detector"], path)
    return config, detector.eval(), checkpoint


def measure(checkpoint_path: str, split: str = "test", random: bool = False,
            config_path: Optional[str] = None) -> dict:
    """Measure the detector of ``checkpoint_path`` on ``split`` and print the figures (module docstring)."""
    import json

    from modules.data.dataset import FramesDataset

    config, detector, checkpoint = load_detector(checkpoint_path, config_path, random)
    root = config.dataset_params.root_dir
    info_path = os.path.join(root, "identities.json")
    if not os.path.isfile(info_path):
        raise UserError(f"{info_path}: not found; this tool needs the synthetic dataset (scripts/synthetic_dataset.py)")
    with open(info_path, encoding="utf-8") as stream:
        joint_names = json.load(stream)["joints"]

    def split_keypoints(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        dataset = FramesDataset.from_config(config.dataset_params, is_train=name == "train")
        keypoints, joints = [], []
        for index in range(len(dataset)):
            video = dataset.video(index)
            keypoints.append(detector_keypoints(detector, video.read(list(range(video.num_frames)))))
            joints.append(np.load(os.path.join(root, "keypoints", name, video.name + ".npy")))
        return keypoints, joints

    all_keypoints, all_joints = split_keypoints(split)
    # the linear map is fitted on the train split (the measured split itself under --split train)
    fit_keypoints, fit_joints = (all_keypoints, all_joints) if split == "train" else split_keypoints("train")
    result = compare(all_keypoints, all_joints, joint_names)
    result.update(regress_joints(np.concatenate(fit_keypoints), np.concatenate(fit_joints),
                                 np.concatenate(all_keypoints), np.concatenate(all_joints)))

    labels = getattr(config.model_params, "label_params", None)
    if labels is not None:                # a labelled detector: each keypoint has its joint; how far from it?
        points = labels.points
        if all(name in joint_names for name in points):
            columns = [joint_names.index(name) for name in points]
            labelled = np.linalg.norm(np.concatenate(all_keypoints) - np.concatenate(all_joints)[:, columns], axis=-1)
            result["labelled_px"] = float(labelled.mean())
            result["labelled_per_keypoint"] = dict(zip(points, labelled.mean(axis=0).tolist()))

    what = "random weights (reference)" if random else f"step {checkpoint.get('step', '?')}"
    print(f"{checkpoint['path']} detector, {what}: {len(all_keypoints)} {split} videos, "
          f"{sum(len(k) for k in all_keypoints)} frames, {config.dataset_params.size[0]} px")
    print_result(result)
    return result


def print_result(result: dict) -> None:
    """The figures of ``measure``, one per line, then one line per keypoint."""
    print(f"  nearest joint:  {result['nearest_px']:.2f} px (mean over keypoints and frames)")
    print(f"  tracking:       {result['tracking_px']:.2f} px (each keypoint to its own joint)")
    print(f"  motion explained: {result['motion_explained']:.3f} (1: moves as a joint does, 0: stands still)")
    print(f"  pose from keypoints: {result['pose_px']:.2f} px mean joint error (linear map fitted on train; "
          f"the mean pose: {result['mean_pose_px']:.2f} px)")
    if "labelled_px" in result:
        worst = max(result["labelled_per_keypoint"].items(), key=lambda item: item[1])
        print(f"  labelled joint: {result['labelled_px']:.2f} px (each keypoint to the joint it was trained on; "
              f"worst: {worst[0]} {worst[1]:.2f} px)")
    for k, (joint, distance, mover, explained) in enumerate(result["per_keypoint"]):
        print(f"    keypoint {k}: nearest {joint:<12} {distance:5.2f} px; moves like {mover:<12} {explained:6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of this project or its run folder")
    parser.add_argument("--config", help="a config overriding the checkpoint's (needed by a FOMM-format checkpoint)")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--random", action="store_true",
                        help="measure the config's detector with seeded random weights instead (the reference)")
    args = parser.parse_args(argv)

    def command() -> None:
        measure(args.checkpoint, args.split, args.random, args.config)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
