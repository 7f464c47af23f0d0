"""The formats of this project's checkpoints, which carry their config: a training checkpoint
(``%08d-checkpoint.pth.tar`` in a run folder) holds FOMM's entries (the family's networks by FOMM's names,
``optimizer_<network>``, ``epoch``) and this project's (the scheduler states, the position in the epoch, the RNG
state and the resolved config) so that a resume is exact; a model file (MODEL_FORMAT) is its networks and config
alone. Which networks a checkpoint must hold is its family's record (modules/config/family.py).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from modules.config.family import family_name, registered
from modules.core.errors import CheckpointError
from modules.core.files import atomic_save, read_checkpoint, resolve_checkpoint

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
    """Where a run folder keeps the checkpoint of ``epoch`` (FOMM's names; ``interrupted`` after Ctrl-C)."""
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
    return validated(read_checkpoint(path), path)


class ModelFileError(CheckpointError):
    """A model file given where a training checkpoint is needed (resume, export)."""


def missing_entries(checkpoint: dict[str, Any], keys: tuple[str, ...], inference: bool = False) -> list[str]:
    """``keys`` and the networks of the checkpoint's family (its record's ``networks``, or only those inference
    runs: ``inference_networks``) absent from it."""
    record = registered().get(family_name(checkpoint.get("config")))   # an unknown one: the config reader's error
    networks = () if record is None else record.inference_networks if inference else record.networks
    return [key for key in (*networks, *keys) if key not in checkpoint]


def validated(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """A read checkpoint checked to be a training checkpoint of this project, with its ``path`` added."""
    if checkpoint.get("format") == MODEL_FORMAT:
        raise ModelFileError(f"{path}: a model file (networks and config, no optimizer state): it animates, "
                             f"reconstructs and serves as --checkpoint_with_kp, but cannot resume training")
    missing = missing_entries(checkpoint, CHECKPOINT_KEYS)
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



def model_file(checkpoint: Mapping[str, Any], networks: Sequence[str],
               provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The model file (MODEL_FORMAT) of a training checkpoint: the ``networks`` inference runs (its family
    record's ``inference_networks``), its config, and ``provenance`` (how it was made: commands, seed,
    training time, ...)."""
    weights = {key: checkpoint[key] for key in networks}
    return {**weights, "config": checkpoint["config"], "format": MODEL_FORMAT, "step": checkpoint["step"],
            "epoch": checkpoint["epoch"], "provenance": dict(provenance)}
