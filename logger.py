"""Run folders, checkpoints and what a training run shows: log.txt, TensorBoard and train-vis images.

A run folder is ``<log_dir>/<config-name>-<timestamp>/`` and holds

    config.yaml                  the resolved config (what the run really used)
    run.json                     one entry per start or resume: command line, seed, git commit, packages
    log.txt                      one line per epoch with the mean losses, plus notes (data split, DDP, ...)
    events.out.tfevents.*        TensorBoard: losses and learning rate per step, image grids per epoch
    train-vis/%08d-train.png     source | source mask | driving | driving mask | low-res | high-res
    %08d-checkpoint.pth.tar      FOMM's checkpoint names (the epoch); ``%08d-interrupted.pth.tar`` on Ctrl-C

Checkpoint files are modules/core/files.py's, their formats modules/config/formats.py's, the pictures
modules/core/pictures.py's.
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
from typing import Any, Mapping, Optional, Sequence

import imageio.v3 as iio
import yaml

from modules.core.errors import UserError
from modules.core.pictures import training_grid

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


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Delete ``*.tmp`` files a killed process left behind while writing a checkpoint."""
    stale = glob.glob(os.path.join(run_dir, "*.tmp"))
    for path in stale:
        os.remove(path)
    return stale


# ----------------------------------------------------------------------------------------------------------
# The run's log

def short_loss_name(loss_name: str) -> str:
    """A loss name short enough for the progress bar: perceptual_low_res -> low_res, equivariance_value -> eq_value."""
    return loss_name.replace("perceptual_", "").replace("equivariance_", "eq_").replace("feature_matching", "fm")


class RunLogger:
    """log.txt, TensorBoard and train-vis images of one run. Create it on rank 0 only."""

    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        """purge_step: on resume, the first step to come; TensorBoard drops the events of the abandoned
        steps at and after it, so that curves are not drawn twice."""
        from torch.utils.tensorboard import SummaryWriter  # slow import: only where a run logs

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

    def images(self, epoch: int, step: int, columns: tuple) -> str:
        """The train-vis picture of an epoch from a family's ``Shown`` columns (a NamedTuple of (B, C, h, w)
        tensors): ``train-vis/<epoch>-train.png`` and TensorBoard's ``train/<its field names>``."""
        grid = training_grid([column.detach() for column in columns])
        path = os.path.join(self.run_dir, "train-vis", f"{epoch:08d}-train.png")
        iio.imwrite(path, grid)
        self.board.add_image("train/" + "|".join(columns._fields), grid, step, dataformats="HWC")
        return path

    def close(self) -> None:
        self.board.close()
        self.text.close()
