"""Checkpoint files: the training-checkpoint and model-file formats, safe reading with clear errors, atomic
writing, and ``load_model`` (a model from a checkpoint of this project, a model file or FOMM's checkpoint).

A training checkpoint (``%08d-checkpoint.pth.tar`` in a run folder) holds FOMM's entries (the family's networks
by FOMM's names, ``optimizer_<network>``, ``epoch``) and this project's: the scheduler states, the position in
the epoch, the RNG state and the resolved config, so that a resume is exact. A model file (MODEL_FORMAT) is
its networks and config alone.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from modules.errors import CheckpointError, UserError


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_checkpoint(path: str | os.PathLike, lazy: bool = False) -> dict[str, Any]:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors for bad files. ``lazy``
    maps the tensors of a zip-format file instead of reading them (for a caller that wants its config only;
    older non-zip files, such as FOMM's, are read whole)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (.pth.tar / .pt)")
    try:
        mmap = lazy and zipfile.is_zipfile(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # weights_only refuses arbitrary Python objects (or the file is no pickle at all). torch's message
        # suggests weights_only=False, which would run code from the file: not advice to pass on.
        reason = _first_line(error).split(". ")[0]
        raise CheckpointError(f"{path}: not a PyTorch tensor checkpoint (weights_only load refused it: "
                              f"{reason})") from None
    except Exception as error:  # a corrupt file can fail anywhere in the unpickler (IndexError, EOFError, ...)
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({_first_line(error)})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict of state dicts, got {type(checkpoint).__name__}")
    return checkpoint


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, then rename it into place.

    The file being written is ``<path>.<random>.tmp``. A crash or ``kill -9`` mid-write leaves the previous
    file intact (the rename is atomic on POSIX and Windows) and at worst a stale ``.tmp`` file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # mkstemp makes the file readable by its owner only; give it the mode a plain open() would, so a
        # checkpoint on a shared cluster disk is readable by the group as usual.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest readable checkpoint of ``run_dir`` by name: highest epoch, a finished epoch before an
    interrupted one (None if there is none). Only the files tried are read."""
    candidates = []
    for path in glob.glob(os.path.join(run_dir, "*.pth.tar")):
        match = re.fullmatch(r"(\d{8})-(checkpoint|interrupted)\.pth\.tar", os.path.basename(path))
        if match:
            candidates.append(((int(match.group(1)), match.group(2) == "checkpoint"), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            read_checkpoint(path)
            return path
        except CheckpointError as error:
            warnings.warn(f"{error}; trying an older checkpoint", UserWarning, stacklevel=2)
    return None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run folder meaning its latest readable checkpoint."""
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no readable NNNNNNNN-checkpoint.pth.tar in this folder")
        return found
    return path


def first_items(items: list[str], limit: int = 3) -> str:
    """The first ``limit`` items, then how many there are in all: for one-line errors."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def state_dict_problems(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into ``module``: missing keys, unexpected keys, shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return [f"{label}: {first_items(items)}" for label, items in
            (("missing keys", missing), ("unexpected keys", unexpected), ("shapes (checkpoint vs config)", shapes))
            if items]


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, name: str) -> None:
    """``module.load_state_dict(state, strict=True)`` (a DataParallel ``module.`` prefix removed), with a
    one-line error naming what differs."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    problems = state_dict_problems(module, state)
    if problems:
        raise CheckpointError(f"{source}: '{name}' does not fit the config's networks ({'; '.join(problems)}); "
                              f"check model_params against the config the checkpoint was trained with")
    check_finite(state, source, name)
    module.load_state_dict(state, strict=True)


def check_finite(state: Mapping[str, torch.Tensor], source: str, name: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run's checkpoint), which would animate black frames
    without a word: one line naming the network and the first such tensor."""
    bad = [key for key, value in state.items()
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{source}: '{name}' holds NaN or infinite weights ({first_items(bad)}); the run "
                              f"that wrote it diverged, use an earlier checkpoint")


# ----------------------------------------------------------------------------------------------------------
# Formats

CHECKPOINT_FORMAT = "kpmask-train-1"
# Entries a training checkpoint of this project must hold (FOMM's names first, then ours).
# (and the networks of its family; the optimizer states are checked when it resumes)
CHECKPOINT_KEYS = ("epoch", "step", "batch", "epoch_complete", "rng", "config", "format")
# A model file (scripts/export_model.py): the networks and the config of a training checkpoint without its
# optimizer and RNG state, for shipping and inference. It animates, reconstructs and serves as
# --checkpoint_with_kp, but does not resume.
MODEL_FORMAT = "kpmask-model-1"
MODEL_KEYS = ("config", "format", "step", "epoch", "provenance")      # and the networks of its family


def checkpoint_path(run_dir: str, epoch: int, interrupted: bool = False) -> str:
    return os.path.join(run_dir, f"{epoch:08d}-{'interrupted' if interrupted else 'checkpoint'}.pth.tar")


def training_checkpoint(networks: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                        schedulers: Mapping[str, Any], grad_scaler: Optional[torch.amp.GradScaler],
                        **bookkeeping: Any) -> dict[str, Any]:
    """The entries of a training checkpoint: FOMM's (the networks by FOMM's names, ``optimizer_<network>``),
    then ours (``scheduler_<network>``, ``grad_scaler`` under fp16) and ``bookkeeping``: epoch, epoch_complete,
    batch, step, global_batch, dataset_size, world_size, seed, rng, config (CHECKPOINT_KEYS and resume's)."""
    state = {name: network.state_dict() for name, network in networks.items()}
    state |= {f"optimizer_{name}": optimizer.state_dict() for name, optimizer in optimizers.items()}
    state |= {f"scheduler_{name}": scheduler.state_dict() for name, scheduler in schedulers.items()}
    state |= bookkeeping
    if grad_scaler is not None:
        state["grad_scaler"] = grad_scaler.state_dict()
    return state


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
