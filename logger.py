"""Run folders, checkpoints and what a training run shows: log.txt, TensorBoard and train-vis images.

A run folder is ``<log_dir>/<config-name>-<timestamp>/`` and holds

    config.yaml                  the resolved config (what the run really used)
    run.json                     one entry per start or resume: command line, seed, git commit, packages
    log.txt                      one line per epoch with the mean losses, plus notes (data split, DDP, ...)
    events.out.tfevents.*        TensorBoard: losses and learning rate per step, image grids per epoch
    train-vis/%08d-train.png     source | source mask | driving | driving mask | low-res | high-res
    %08d-checkpoint.pth.tar      FOMM's checkpoint names (the epoch); ``%08d-interrupted.pth.tar`` on Ctrl-C

Checkpoint files are modules/core/files.py's, their formats modules/config/formats.py's, the pictures
modules/core/pictures.py's. A write that fails (a full disk) is a ``RunFolderError``: one line naming the file;
files are replaced through a temporary file, so none is left half written (log.txt and the events file are
appended to: at worst their last line or record is cut).
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import imageio.v3 as iio
import yaml

from modules.core.errors import UserError
from modules.core.pictures import training_grid

PACKAGES = ("torch", "torchvision", "numpy", "pyyaml", "imageio", "imageio-ffmpeg", "pillow", "scikit-image", "scipy",
            "tqdm", "tensorboard")


# ----------------------------------------------------------------------------------------------------------
# Run folder

class RunFolderError(UserError):
    """A file of the run folder could not be written (a full disk, a quota, a size limit)."""


def write_error(path: str, error: OSError) -> RunFolderError:
    """The one line for a failed write of ``path``: the file, the system's reason, what was kept."""
    return RunFolderError(f"{path}: cannot write ({error.strerror or error}); training stopped, the checkpoints "
                          f"written before are intact")


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OSError of the writes inside into a RunFolderError naming ``path``."""
    try:
        yield
    except OSError as error:
        raise write_error(path, error) from None


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


def _replace_file(path: str, write: Callable[[str], Any]) -> None:
    """``write(temporary)`` then rename it to ``path``: a crash never leaves half a file, a failed write (a
    RunFolderError) leaves none and the previous file as it was."""
    temporary = path + ".tmp"
    try:
        with writing(path):
            write(temporary)
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_text(path: str, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)

    _replace_file(path, write)


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Delete ``*.tmp`` files a killed process left behind while writing a checkpoint or a picture."""
    stale = glob.glob(os.path.join(run_dir, "*.tmp")) + glob.glob(os.path.join(run_dir, "train-vis", "*.tmp"))
    for path in stale:
        os.remove(path)
    return stale


# ----------------------------------------------------------------------------------------------------------
# The run's log

def short_loss_name(loss_name: str) -> str:
    """A loss name short enough for the progress bar: perceptual_low_res -> low_res, equivariance_value -> eq_value."""
    return loss_name.replace("perceptual_", "").replace("equivariance_", "eq_").replace("feature_matching", "fm")


def _quiet_board_thread_errors() -> None:
    """TensorBoard's writer thread dies on a failed write and Python prints its traceback; the same OSError
    reaches the main thread at the next write or at close, where it becomes one line, so the thread's own
    report is left out (other threads' errors are printed as before)."""
    previous = threading.excepthook
    if getattr(previous, "quiet_board", False):
        return

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.quiet_board = True
    threading.excepthook = hook


def _newest_events_file(run_dir: str) -> str:
    """The TensorBoard events file being written in ``run_dir`` (the newest), or their pattern if none."""
    found = glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    return max(found, key=os.path.getmtime) if found else os.path.join(run_dir, "events.out.tfevents.*")


class RunLogger:
    """log.txt, TensorBoard and train-vis images of one run. Create it on rank 0 only. Every failed write is a
    RunFolderError naming the file."""

    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        """purge_step: on resume, the first step to come; TensorBoard drops the events of the abandoned
        steps at and after it, so that curves are not drawn twice."""
        from torch.utils.tensorboard import SummaryWriter  # slow import: only where a run logs

        self.run_dir = run_dir
        self.text_path = os.path.join(run_dir, "log.txt")
        with writing(os.path.join(run_dir, "train-vis")):
            os.makedirs(os.path.join(run_dir, "train-vis"), exist_ok=True)
        with writing(self.text_path):
            self.text = open(self.text_path, "a", encoding="utf-8")
        _quiet_board_thread_errors()
        try:
            self.board = SummaryWriter(run_dir, purge_step=purge_step)
        except OSError as error:                    # it writes its first event at once
            raise write_error(_newest_events_file(run_dir), error) from None
        self.board_path = getattr(getattr(self.board.file_writer, "event_writer", None), "_file_name",
                                  _newest_events_file(run_dir))

    def _write_line(self, line: str) -> None:
        with writing(self.text_path):
            self.text.write(line)
            self.text.flush()

    def note(self, message: str, echo: bool = True) -> None:
        """A line for log.txt (and the terminal): data splits, resumes, DDP caveats."""
        self._write_line(f"# {message}\n")
        if echo:
            print(message, flush=True)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        with writing(self.board_path):
            for name, value in values.items():
                self.board.add_scalar(name, value, step)

    def epoch(self, epoch: int, step: int, losses: Mapping[str, float], lr: float, seconds: float,
              samples: int) -> None:
        terms = "; ".join(f"{name} - {value:.5f}" for name, value in losses.items())
        self._write_line(f"{epoch:08d}) step {step}; lr {lr:.3g}; {terms}; {seconds:.1f} s, "
                         f"{samples / max(seconds, 1e-9):.1f} samples/s\n")
        self.scalars(step, {f"epoch/{name}": value for name, value in losses.items()})

    def images(self, epoch: int, step: int, columns: tuple) -> str:
        """The train-vis picture of an epoch from a family's ``Shown`` columns (a NamedTuple of (B, C, h, w)
        tensors): ``train-vis/<epoch>-train.png`` and TensorBoard's ``train/<its field names>``."""
        grid = training_grid([column.detach() for column in columns])
        path = os.path.join(self.run_dir, "train-vis", f"{epoch:08d}-train.png")
        _replace_file(path, lambda temporary: iio.imwrite(temporary, grid, extension=".png"))
        with writing(self.board_path):
            self.board.add_image("train/" + "|".join(columns._fields), grid, step, dataformats="HWC")
        return path

    def close(self, error: Optional[BaseException] = None) -> None:
        """Note the ``error`` that ended training, if any, then flush and close the events file and log.txt (both,
        whatever fails). A failed write raises its RunFolderError, but not after an error: that one says more."""
        if error is not None and not self.text.closed:
            with contextlib.suppress(RunFolderError):
                self.note(f"error: {error}" if isinstance(error, UserError) else
                          f"stopped by {type(error).__name__}: {error}", echo=False)
        failures = []
        for path, close in ((self.board_path, self.board.close), (self.text_path, self.text.close)):
            try:
                with writing(path):
                    close()
            except RunFolderError as failure:
                failures.append(failure)
        if failures and error is None:
            raise failures[0]
