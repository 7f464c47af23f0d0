"""Run folders, checkpoints and what a training run shows: log.txt, TensorBoard and train-vis images.

A run folder is ``<log_dir>/<config-name>-<timestamp>/`` and holds

    config.yaml                  the resolved config (what the run really used)
    run.json                     one entry per start or resume: command line, seed, git commit, packages
    log.txt                      one line per epoch with the mean losses, plus notes (data split, DDP, ...)
    events.out.tfevents.*        TensorBoard: losses and learning rate per step, image grids per epoch
    train-vis/%08d-train.png     source | source mask | driving | driving mask | low-res | high-res
    %08d-checkpoint.pth.tar      FOMM's checkpoint names (the epoch); ``%08d-interrupted.pth.tar`` on Ctrl-C

Checkpoints are written atomically (``modules.checkpoint.atomic_save``) and read with ``weights_only=True``.
"""
from __future__ import annotations

import datetime
import glob
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import warnings
from typing import Any, Mapping, Optional, Sequence

import imageio.v3 as iio
import numpy as np
import torch
import yaml

from modules.checkpoint import atomic_save, read_checkpoint, resolve_checkpoint
from modules.errors import CheckpointError, UserError
from modules.video_io import to_uint8  # noqa: F401  (run_log.to_uint8 in the stage scripts)
from modules.outputs import atomic_file

CHECKPOINT_FORMAT = "kpmask-train-1"
# Entries a training checkpoint of this project must hold (FOMM's names first, then ours).
# (and the networks of its family; the optimizer states are checked when it resumes)
CHECKPOINT_KEYS = ("epoch", "step", "batch", "epoch_complete", "rng", "config", "format")
# A model file (scripts/export_model.py): the networks and the config of a training checkpoint without its
# optimizer and RNG state, for shipping and inference. It animates, reconstructs and serves as
# --checkpoint_with_kp, but does not resume.
MODEL_FORMAT = "kpmask-model-1"
MODEL_KEYS = ("config", "format", "step", "epoch", "provenance")      # and the networks of its family
PACKAGES = ("torch", "torchvision", "numpy", "pyyaml", "imageio", "imageio-ffmpeg", "pillow", "scikit-image", "scipy",
            "tqdm", "tensorboard")


# ----------------------------------------------------------------------------------------------------------
# Run folder

def make_run_dir(log_dir: str, config_path: str) -> str:
    """A new ``<log_dir>/<config-name>-<YYYYmmdd-HHMMSS>/`` (a suffix is added if that name is taken)."""
    name = os.path.splitext(os.path.basename(config_path))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(log_dir, f"{name}-{stamp}")
    os.makedirs(log_dir, exist_ok=True)
    run_dir, suffix = base, 1
    while True:
        try:
            os.mkdir(run_dir)              # atomic: two runs started in the same second get different folders
            return run_dir
        except FileExistsError:
            suffix += 1
            run_dir = f"{base}-{suffix}"
        except OSError as error:
            raise UserError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from None


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        result = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        commit = result.stdout.strip() if result.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_run_info(run_dir: str, config_dict: Mapping[str, Any], *, argv: Sequence[str], seed: int,
                   extra: Mapping[str, Any]) -> None:
    """Save the resolved config and append this session (command, seed, commit, packages) to run.json."""
    _write_text(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(dict(config_dict), sort_keys=False))
    info_path = os.path.join(run_dir, "run.json")
    sessions = []
    if os.path.exists(info_path):
        try:
            with open(info_path, encoding="utf-8") as stream:
                sessions = json.load(stream).get("sessions", [])
        except (OSError, ValueError, AttributeError):
            sessions = []         # a damaged run.json must not stop a resume; the new one replaces it
    sessions.append({"started": datetime.datetime.now().isoformat(timespec="seconds"),
                     "command": " ".join([sys.executable] + list(argv)), "seed": seed,
                     "git_commit": _git_commit(), "packages": package_versions(), **extra})
    _write_text(info_path, json.dumps({"sessions": sessions}, indent=2))


def _write_text(path: str, text: str) -> None:
    """Write through ``<path>.tmp`` and rename: a crash never leaves half a file."""
    with open(path + ".tmp", "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints

def checkpoint_path(run_dir: str, epoch: int, interrupted: bool = False) -> str:
    return os.path.join(run_dir, f"{epoch:08d}-{'interrupted' if interrupted else 'checkpoint'}.pth.tar")


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    atomic_save(dict(state, format=CHECKPOINT_FORMAT), path)


def load_training_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint written by this project's trainer (a folder means its latest checkpoint)."""
    path = resolve_checkpoint(path)
    return _validated(read_checkpoint(path), path)


class ModelFileError(CheckpointError):
    """A model file given where a training checkpoint is needed (resume, export)."""


def _missing(checkpoint: dict[str, Any], keys: tuple[str, ...], inference: bool = False) -> list[str]:
    """``keys`` and the networks of the checkpoint's family (its record's ``networks``, or only those inference
    runs: ``inference_networks``) absent from it."""
    from modules.family import family_name, registered
    record = registered().get(family_name(checkpoint.get("config")))   # an unknown one: the config reader's error
    networks = () if record is None else record.inference_networks if inference else record.networks
    return [key for key in (*networks, *keys) if key not in checkpoint]


def _validated(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """A read checkpoint checked to be a training checkpoint of this project, with its ``path`` added."""
    if checkpoint.get("format") == MODEL_FORMAT:
        raise ModelFileError(f"{path}: a model file (networks and config, no optimizer state): it animates, "
                             f"reconstructs and serves as --checkpoint_with_kp, but cannot resume training")
    missing = _missing(checkpoint, CHECKPOINT_KEYS)
    if not missing and checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format']!r}, this version reads "
                              f"{CHECKPOINT_FORMAT!r}")
    if missing:
        hint = ""
        if "kp_detector" in checkpoint and "config" not in checkpoint:
            hint = " (a FOMM checkpoint? pass it as --checkpoint_with_kp to start a run with its detector)"
        raise CheckpointError(f"{path}: not a training checkpoint of this project: missing "
                              f"{', '.join(missing)}{hint}")
    checkpoint["path"] = path
    return checkpoint


def load_model(path: str, device: torch.device, config_path: Optional[str] = None,
               ablation: Optional[str] = None) -> tuple[Any, Any, dict[str, Any]]:
    """(config, model in eval mode on ``device``, checkpoint) from a training checkpoint of this project or its run
    folder, or a model file (MODEL_FORMAT), both holding their config, or from a FOMM-format checkpoint (an
    official ``vox-cpk.pth.tar``: networks only) together with ``config_path``, the config of its networks.

    ``ablation`` (perturbed masks only: none, no_pert, no_ref, no_id) replaces the config's; results then go
    to ``<mode>-<ablation>/``. One checkpoint serves all four: r's loss never reaches m, l or h in training."""
    from modules.config import config_from_dict, load_config, resolve_data_paths
    from modules.models import model_from_checkpoint

    checkpoint = read_checkpoint(path) if os.path.isfile(path) else None     # a folder: its latest, below
    if checkpoint is not None and not ("format" in checkpoint and "config" in checkpoint):
        if not {"generator", "kp_detector"} <= set(checkpoint):
            raise CheckpointError(f"{path}: neither a training checkpoint of this project nor a FOMM checkpoint "
                                  f"(no 'generator' and 'kp_detector' entries; found {', '.join(sorted(checkpoint))})")
        if config_path is None:
            raise UserError(f"{path}: a FOMM-format checkpoint holds no config; pass --config with the networks it was "
                            f"trained with (config/vox-256-fomm.yaml or config/taichi-256-fomm.yaml for the official "
                            f"vox-cpk.pth.tar / taichi-cpk.pth.tar)")
        config = load_config(config_path)
        # results of a foreign file go into <its folder>/<its name>/, never over another file's
        checkpoint = dict(checkpoint, path=path, results_root=_results_root(path))
    else:
        if checkpoint is not None and checkpoint.get("format") == MODEL_FORMAT:
            missing = _missing(checkpoint, MODEL_KEYS, inference=True)
            if missing:
                raise CheckpointError(f"{path}: model file without {', '.join(missing)}")
            # results of a shipped model go into <its folder>/<its name>/, beside it
            checkpoint = dict(checkpoint, path=path, results_root=_results_root(path))
        else:
            checkpoint = load_training_checkpoint(path) if checkpoint is None else _validated(checkpoint, path)
        if config_path is not None:
            warnings.warn(f"--config {config_path} ignored: {checkpoint['path']} holds the config it was trained with",
                          UserWarning, stacklevel=2)
        config = config_from_dict(checkpoint["config"], f"{checkpoint['path']}:config")
    if ablation is not None:
        if ablation not in config.record.ablations:
            raise UserError(f"--ablation {ablation}: {checkpoint['path']} is a {config.motion_name} model; the "
                            f"ablations (no_pert, no_ref, no_id) are the perturbed-masks model's")
        config.model_params.ablation = ablation
        checkpoint = dict(checkpoint, results_suffix=f"-{ablation}")
    resolve_data_paths(config, config_path if "config" not in checkpoint else checkpoint["path"])
    if not config.record.animates:
        raise UserError(f"{checkpoint['path']}: a labelled keypoint detector (stage one) has no generator to "
                        f"reconstruct or animate with; pass it as --checkpoint_with_kp to a heatmap, circles or FOMM "
                        f"config with its detector settings (measure it with scripts/keypoints_vs_joints.py)")
    model = model_from_checkpoint(config, checkpoint, checkpoint["path"])
    return config, model.to(device).eval(), checkpoint


def _results_root(path: str) -> str:
    """``<folder of path>/<its name without .pth.tar>``: where results of a file outside a run folder go."""
    stem = os.path.basename(path)
    for suffix in (".tar", ".pth", ".pt"):
        stem = stem.removesuffix(suffix)
    return os.path.join(os.path.dirname(os.path.abspath(path)), stem)


def model_file(checkpoint: Mapping[str, Any], networks: Sequence[str],
               provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The model file (MODEL_FORMAT) of a training checkpoint: the ``networks`` inference runs (its family
    record's ``inference_networks``), its config, and ``provenance`` (how it was made: commands, seed,
    training time, ...)."""
    weights = {key: checkpoint[key] for key in networks}
    return {**weights, "config": checkpoint["config"], "format": MODEL_FORMAT, "step": checkpoint["step"],
            "epoch": checkpoint["epoch"], "provenance": dict(provenance)}


def results_path(checkpoint: Mapping[str, Any], name: str) -> str:
    """``<run folder of the checkpoint>/<name>/``: where a mode's results go. Build them with
    ``modules.outputs.results_folder(path)``, which swaps the new set in only when complete, so a mode can run
    twice and an interrupted run keeps the earlier results."""
    root = checkpoint.get("results_root") or os.path.dirname(os.path.abspath(checkpoint["path"]))
    return os.path.join(root, name + checkpoint.get("results_suffix", ""))


def write_strip(path: str, frames: np.ndarray) -> None:
    """uint8 frames (T, H, W, 3) side by side in one png (H, T*W, 3): the layout FOMM's evaluation tools read.
    Written under a temporary name and renamed when complete."""
    with atomic_file(path) as temporary:
        iio.imwrite(temporary, np.concatenate(list(frames), axis=1), extension=".png")


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Delete ``*.tmp`` files a killed process left behind while writing a checkpoint."""
    stale = glob.glob(os.path.join(run_dir, "*.tmp"))
    for path in stale:
        os.remove(path)
    return stale


# ----------------------------------------------------------------------------------------------------------
# Pictures

def side_by_side(columns: Sequence[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """Per sample, the columns' images next to each other: (B, H, len(columns)*W, 3) uint8."""
    return np.concatenate([to_uint8(column, size) for column in columns], axis=2)


def training_grid(columns: Sequence[torch.Tensor], max_rows: int = 4) -> np.ndarray:
    """Images side by side per sample, one row per batch element: (rows*H, len(columns)*W, 3) uint8.

    columns: (B, C, h, w) tensors in [0, 1]; smaller ones (the masks) are scaled up with nearest
    neighbours so that each cell shows exactly what the network saw.
    """
    size = (max(c.shape[2] for c in columns), max(c.shape[3] for c in columns))
    rows = side_by_side([column[:max_rows] for column in columns], size)       # (rows, H, k*W, 3)
    return np.concatenate(list(rows), axis=0)


# ----------------------------------------------------------------------------------------------------------
# The run's log

class RunLogger:
    """log.txt, TensorBoard and train-vis images of one run. Create it on rank 0 only."""

    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        """purge_step: on resume, the first step to come; TensorBoard drops the events of the abandoned
        steps at and after it, so that curves are not drawn twice."""
        from torch.utils.tensorboard import SummaryWriter   # slow import: only where a run logs

        self.run_dir = run_dir
        os.makedirs(os.path.join(run_dir, "train-vis"), exist_ok=True)
        self.text = open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8")
        self.board = SummaryWriter(run_dir, purge_step=purge_step)

    def note(self, message: str, echo: bool = True) -> None:
        """A line for log.txt (and the terminal): data splits, resumes, DDP caveats."""
        self.text.write(f"# {message}\n")
        self.text.flush()
        if echo:
            print(message, flush=True)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.board.add_scalar(name, value, step)

    def epoch(self, epoch: int, step: int, losses: Mapping[str, float], lr: float, seconds: float,
              samples: int) -> None:
        terms = "; ".join(f"{name} - {value:.5f}" for name, value in losses.items())
        self.text.write(f"{epoch:08d}) step {step}; lr {lr:.3g}; {terms}; {seconds:.1f} s, "
                        f"{samples / max(seconds, 1e-9):.1f} samples/s\n")
        self.text.flush()
        self.scalars(step, {f"epoch/{name}": value for name, value in losses.items()})

    def images(self, epoch: int, step: int, grid: np.ndarray,
               columns: str = "source|source_mask|driving|driving_mask|low_res|high_res") -> str:
        path = os.path.join(self.run_dir, "train-vis", f"{epoch:08d}-train.png")
        iio.imwrite(path, grid)
        self.board.add_image(f"train/{columns}", grid, step, dataformats="HWC")
        return path

    def close(self) -> None:
        self.board.close()
        self.text.close()
