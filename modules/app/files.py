"""What the web page (modules/app/page.py) keeps on disk and what it accepts: the models it offers, the bundled
example, per-session folders, and the limits on uploads.

Everything the app writes lives under one temporary root, removed when the server stops:

    ROOT/gradio/<hash>/<file>     Gradio's own cache: uploads as they arrive, results as they are served
    ROOT/sessions/<session>/      one browser session's inputs and results, removed when the tab closes
    ROOT/examples/                the bundled example pairs: real faces (copied from examples/faces) and the
                                  synthetic dataset's demo pair (rendered)

A session's files carry its id in their names (``<session>-source.png``, ``<session>-result-1.mp4``), so that
when its tab closes its copies in Gradio's cache are found and removed too. A session opened through the raw
API never sends the tab-close event, so session folders are also bounded: when a new session starts, those
unused for SESSION_IDLE_S are removed, then the least recently used beyond MAX_SESSIONS.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shutil
import tempfile
from typing import Optional

from modules.core.errors import UserError
from modules.core.files import REPOSITORY

REPO = REPOSITORY
SHIPPED = os.path.join(REPO, "models")
# The page's default model is the first of these that is shipped: the real-face models, then the one ``make demo``
# shows for the synthetic figures (so a user who deletes the face models still gets a working default).
PREFERRED = ("faces-heatmap.pth.tar", "faces-circles.pth.tar", "tiny-heatmap.pth.tar")
FACE_EXAMPLE = (os.path.join(REPO, "examples", "faces", "lp-s12.jpg"),
                os.path.join(REPO, "examples", "faces", "lp-d18.mp4"))
REAL_FACES, SYNTHETIC = "real faces", "synthetic"       # the bundled examples' names
MODEL_PATTERNS = ("*.pth.tar", "*.pth", "*.pt")
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")   # Gradio's session hashes; nothing that could leave the folder
MAX_PIXELS = 40_000_000          # a source image larger than this is refused (Pillow's bomb limit is 89 M)
SESSION_IDLE_S = 3600            # a session folder unused this long goes when another session starts
MAX_SESSIONS = 64                # session folders kept at most (the least recently used go first)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one upload may be: ``upload_mb`` per file (images and videos), ``frames`` per driving video."""
    upload_mb: float = 50.0
    frames: int = 1000


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model the page offers: its file, and what it allows (or why it cannot animate)."""
    path: str
    label: str
    kind: str = ""                    # heatmap, circles, FOMM, ... (config.motion_name)
    relative: bool = False            # relative motion possible (keypoints to move)
    face: bool = False                # its config's metrics_params.landmarks is "face": a model of real faces
    problem: str = ""                 # the one-line error when the file does not load as an animating model

    def describe(self) -> str:
        if self.problem:
            return f"**{self.label}** does not load: {self.problem}"
        motion = "relative (default) or absolute motion" if self.relative else \
            "absolute motion only (its mask has no points to move)"
        return f"**{self.label}**: a {self.kind} model; {motion}."


def describe_model(path: str) -> ModelInfo:
    """Read ``path``'s config (not its networks): what the page should offer for it."""
    from modules.config.loading import config_from_dict
    from modules.core.files import read_checkpoint

    label = os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path
    try:
        checkpoint = read_checkpoint(path, lazy=True)       # the config only: tensors stay on disk
        if "config" not in checkpoint:
            raise UserError(f"{path}: holds no config (a FOMM-format checkpoint? the page runs this project's "
                            f"checkpoints and model files; animate it with --config on the command line)")
        config = config_from_dict(checkpoint["config"], f"{path}:config")
        if not config.record.animates:
            raise UserError(f"{path}: a {config.motion_name} checkpoint has no generator to animate with")
    except UserError as error:
        return ModelInfo(path, label, problem=str(error))
    return ModelInfo(path, label, config.motion_name, bool(config.relative_motion_possible),
                     face=config.metrics_params.landmarks == "face")


def model_files(folder: str) -> list[str]:
    """The checkpoint and model files in ``folder`` and its run folders (one level down), sorted."""
    found = set()
    for pattern in MODEL_PATTERNS:
        found.update(glob.glob(os.path.join(folder, pattern)))
        found.update(glob.glob(os.path.join(folder, "*", pattern)))
    return sorted(path for path in found if os.path.isfile(path))


def list_models(extra_folder: Optional[str]) -> list[ModelInfo]:
    """The shipped models that animate, then every model file in ``extra_folder`` (those that do not load are
    listed too: choosing one shows why)."""
    shipped = [info for info in map(describe_model, model_files(SHIPPED)) if not info.problem]
    shipped.sort(key=_preference)                                   # stable: the rest stay sorted
    if extra_folder is None:
        return shipped
    if not os.path.isdir(extra_folder):
        raise UserError(f"--models {extra_folder}: not a folder of checkpoints or model files")
    extra = [describe_model(path) for path in model_files(os.path.abspath(extra_folder))]
    if not extra:
        raise UserError(f"--models {extra_folder}: no {', '.join(MODEL_PATTERNS)} files in it or its subfolders")
    return shipped + extra


def _preference(info: ModelInfo) -> int:
    name = os.path.basename(info.path)
    return PREFERRED.index(name) if name in PREFERRED else len(PREFERRED)


def copy_face_example(folder: str) -> Optional[tuple[str, str]]:
    """The real-face example (examples/faces) copied into ``folder``, or None when the repository lacks it.

    Copied, not served in place: Gradio serves only files under its allowed paths (the app's root), and the
    server's working directory need not be the repository."""
    if not all(os.path.isfile(path) for path in FACE_EXAMPLE):
        return None
    os.makedirs(folder, exist_ok=True)
    copies = tuple(os.path.join(folder, os.path.basename(path)) for path in FACE_EXAMPLE)
    for path, copy in zip(FACE_EXAMPLE, copies):
        shutil.copyfile(path, copy)
    return copies[0], copies[1]


def ordered_examples(examples: dict[str, tuple[str, str]],
                     model: Optional[ModelInfo]) -> list[tuple[str, tuple[str, str]]]:
    """The examples by name, the one that suits ``model`` (the page's default) first: real faces for a face
    model, the synthetic pair otherwise (a face model cannot animate the figures it never saw, nor the
    reverse)."""
    default = REAL_FACES if model is not None and model.face and REAL_FACES in examples else SYNTHETIC
    return sorted(examples.items(), key=lambda item: item[0] != default)


class Storage:
    """The app's temporary root and its per-session folders."""

    def __init__(self, root: Optional[str] = None):
        self.root = root or tempfile.mkdtemp(prefix="kpmask-app-")
        self.gradio = os.path.join(self.root, "gradio")
        self.sessions = os.path.join(self.root, "sessions")
        for folder in (self.gradio, self.sessions):
            os.makedirs(folder, exist_ok=True)

    def session(self, session_id: str) -> str:
        """The folder of one browser session (made on first use, its time of use renewed on every call)."""
        if not SESSION_ID.fullmatch(session_id or ""):
            raise UserError(f"session {session_id!r}: not a session id")
        folder = os.path.join(self.sessions, session_id)
        if os.path.isdir(folder):
            os.utime(folder)                             # the age of a session counts from its last use
        else:
            self.prune(keep=MAX_SESSIONS - 1)
            os.makedirs(folder, exist_ok=True)
        return folder

    def prune(self, keep: int = MAX_SESSIONS, idle_s: float = SESSION_IDLE_S) -> list[str]:
        """End the sessions unused for ``idle_s`` seconds, then the least recently used beyond ``keep``;
        returns their ids."""
        import time

        used = {}
        for name in os.listdir(self.sessions):
            with contextlib.suppress(OSError):           # a session ending at the same moment
                used[name] = os.path.getmtime(os.path.join(self.sessions, name))
        by_age = sorted(used, key=used.get)              # least recently used first
        idle = [name for name in by_age if time.time() - used[name] > idle_s]
        rest = [name for name in by_age if name not in idle]
        ended = idle + rest[:max(0, len(rest) - keep)]
        for name in ended:
            self.end_session(name)
        return ended

    def end_session(self, session_id: str) -> None:
        """Remove the session's folder and its files' copies in Gradio's cache."""
        if not SESSION_ID.fullmatch(session_id or ""):
            return
        shutil.rmtree(os.path.join(self.sessions, session_id), ignore_errors=True)
        for path in glob.glob(os.path.join(self.gradio, "*", f"{session_id}-*")):
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def accept_upload(path: Optional[str], what: str, types: tuple[str, ...], limits: Limits, folder: str,
                  name: str) -> str:
    """An uploaded file checked (there, of a known type, within the size limit) and copied into the session's
    ``folder`` as ``name`` + its extension; returns the copy's path."""
    if not path:
        raise UserError(f"{what}: nothing uploaded (pick a file or a bundled example)")
    extension = os.path.splitext(path)[1].lower()
    shown = os.path.basename(path)
    if extension not in types:
        raise UserError(f"{what} {shown}: expected one of {', '.join(types)}")
    size_mb = os.path.getsize(path) / 2 ** 20
    if size_mb > limits.upload_mb:
        raise UserError(f"{what} {shown}: {size_mb:.1f} MB, over the {limits.upload_mb:g} MB limit "
                        f"(--max_upload_mb)")
    copy = os.path.join(folder, name + extension)
    shutil.copyfile(path, copy)
    return copy


def check_source(path: str, shown: str) -> None:
    """The source image decodes whole and is not absurdly large (a one-line UserError otherwise)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height <= MAX_PIXELS:
                image.load()                                 # a truncated file fails here, not in the model
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise UserError(f"source image {shown}: not an image Pillow can read (corrupt, or not an image "
                        f"file)") from None
    if width * height > MAX_PIXELS:
        raise UserError(f"source image {shown}: {width}x{height}, over the {MAX_PIXELS / 1e6:.0f}-megapixel limit")


def check_driving(path: str, shown: str, limits: Limits) -> int:
    """The driving video opens, has frames, and no more than the frame limit; returns its frame count."""
    from modules.data.video_io import VideoError, open_video

    try:
        video = open_video(path)
    except VideoError as error:
        raise UserError(f"driving video {shown}: {error.problem}") from None
    if video.num_frames < 1:
        raise UserError(f"driving video {shown}: has no frames")
    if video.num_frames > limits.frames:
        raise UserError(f"driving video {shown}: {video.num_frames} frames, over the {limits.frames}-frame limit "
                        f"(--max_frames)")
    return video.num_frames
