"""Checkpoint files: safe reading with clear one-line errors, atomic writing, the latest checkpoint of a run
folder, and the checks of a state dict against a network (shapes, NaN). What a training checkpoint or a model file
must hold is modules/config/formats.py; building a model from one is modules/inference/loading.py.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from typing import Any, Mapping, Optional

import torch
from torch import nn

from modules.core.errors import CheckpointError

# The checkout the library runs from: where the shipped models/ and examples/ are.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    file intact (the rename is atomic on POSIX and Windows) and at worst a stale ``.tmp`` file. A failed write
    (a full disk: ENOSPC, a size limit: EFBIG) raises its OSError, removes the ``.tmp`` file and leaves the
    previous file as it was.
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
            recording = _RecordingStream(stream)
            try:
                torch.save(obj, recording)
            except RuntimeError:
                # torch's writer turns a failed write into "unexpected pos ..."; the OSError it swallowed
                # (ENOSPC, EFBIG) says what happened and to which file.
                if recording.error is None:
                    raise
                raise recording.error from None
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class _RecordingStream:
    """A binary file for torch.save that keeps the first OSError of a write (torch reports it as a RuntimeError
    without the errno)."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.stream.flush()


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
