"""The output contract: what a command writes never costs the user a file they had.

Every writer of the project (result videos, frame strips, results folders, exported models, the demo,
checkpoints) goes through the helpers here:

* ``check_output_file`` / ``check_output_folder`` run before any model or video is loaded, so a bad output
  path fails in a second with one line instead of after minutes of work. A result may not be a folder, lie
  in a file, lie in a folder that cannot be written, or be one of the command's inputs; a single result file
  that already exists is refused unless ``--overwrite`` is given.
* ``partial_path`` names the temporary file a result is written to, in the result's own folder (so that the
  final ``os.replace`` is atomic), and ``atomic_file`` renames it into place only when the writer succeeded
  and its check passed; any failure removes it and leaves every earlier file as it was.
* ``results_folder`` builds a folder of results (reconstruction/, animation/, demo/) beside the old one and
  swaps it in only when complete: an interrupted run never deletes the previous results.
* ``handle_termination`` makes SIGTERM unwind like Ctrl-C (``Terminated``), so the same clean-up runs.

Only the standard library is imported: ``run.py`` checks outputs before the heavy imports.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from typing import Any, Iterator, Mapping, Optional, Sequence

from modules.core.errors import UserError

PARTIAL = ".partial"          # temporary results are ".<name>.partial-<pid><ext>" (hidden, in the result's folder)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's kill, ``kill PID``): unwinds like KeyboardInterrupt, so every ``with``
    block removes its partial output before the process exits."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def handle_termination() -> None:
    """Turn SIGTERM into ``Terminated`` in the main thread (a no-op elsewhere, where signals cannot be set)."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:          # not the main thread (e.g. a web server's worker)
        pass


# ----------------------------------------------------------------------------------------------------------
# Checks, before anything is loaded

def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)           # hard links, bind mounts
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_parent(path: str, what: str) -> None:
    """The folder that will hold ``path`` exists as a writable folder, or can be made (its nearest existing
    ancestor is a writable folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: the folder {probe} is not writable")


def check_output_file(path: str, *, what: str, inputs: Sequence[Optional[str]] = (), overwrite: bool = False,
                      extensions: Optional[Sequence[str]] = None) -> None:
    """Refuse, with one line naming ``what`` (e.g. "--result_video") and the path, a result file that could
    not be written or would destroy something: a folder, a path inside a file, an unwritable folder, one of
    ``inputs`` (or inside an input folder), or an existing file without ``overwrite``."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a folder; give a file name")
    for given in inputs:
        if given and os.path.exists(given) and (_same_file(path, given) or
                                                (os.path.isdir(given) and _inside(path, given))):
            raise UserError(f"{what} {path}: is {'inside ' if os.path.isdir(given) else ''}an input of this "
                            f"command ({given}); the result would destroy it, choose another name")
    if extensions is not None:
        extension = os.path.splitext(path)[1].lower()
        if extension not in extensions:
            raise UserError(f"{what} {path}: cannot write {extension or 'a file without extension'} "
                            f"(expected {', '.join(extensions)})")
    _check_parent(path, what)
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"{what} {path}: already exists; give --overwrite to replace it, or another name")


def check_output_folder(path: str, *, what: str, inputs: Sequence[Optional[str]] = ()) -> None:
    """A folder that results go into (``--log_dir``, ``--out`` of the demo): not a file, not inside a file,
    writable, and not one of the command's input files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path}: is a file, expected a folder")
    for given in inputs:
        if given and os.path.isfile(given) and _same_file(path, given):
            raise UserError(f"{what} {path}: is an input of this command")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path}: the folder is not writable")
    else:
        _check_parent(path, what)


def check_data_folder(path: str) -> None:
    """``--data``: a dataset folder to evaluate on (its test/, or videos directly in it), one line if not."""
    if not os.path.isdir(path):
        raise UserError(f"--data {path}: {'not a folder' if os.path.exists(path) else 'no such folder'} (expected "
                        f"a dataset folder: test/ inside it, or videos and frame folders directly in it)")


def default_result(source_image: str) -> str:
    """``--result_video``'s default: ``<source name>-animated.mp4`` in the current folder."""
    return os.path.splitext(os.path.basename(source_image))[0] + "-animated.mp4"


def side_by_side_path(result: str) -> str:
    """Where ``--visualize`` writes source | driving | mask | result: ``<result>-side-by-side<ext>`` beside it."""
    stem, extension = os.path.splitext(result)
    return f"{stem}-side-by-side{extension}"


# ----------------------------------------------------------------------------------------------------------
# Writing: a temporary name, renamed into place when complete

def partial_path(path: str) -> str:
    """``<folder>/.<stem>.partial-<pid><ext>``: hidden, beside the result, unique to this process."""
    folder, base = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(base)
    if base.endswith(".pth.tar"):
        stem, extension = base[:-len(".pth.tar")], ".pth.tar"
    return os.path.join(folder, f".{stem}{PARTIAL}-{os.getpid()}{extension}")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to; when the block ends normally it is renamed over
    ``path``, otherwise removed.

        with atomic_file("strip.png") as temporary:
            imageio.imwrite(temporary, frames)
    """
    temporary = partial_path(path)
    os.makedirs(os.path.dirname(temporary), exist_ok=True)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_json(path: str, value: Any) -> None:
    """``value`` as JSON at ``path``, written atomically (``atomic_file``)."""
    with atomic_file(path) as partial:
        with open(partial, "w", encoding="utf-8") as stream:
            json.dump(value, stream, indent=1)


@contextlib.contextmanager
def results_folder(path: str) -> Iterator[str]:
    """Yield a fresh folder to build a set of results in; when the block ends normally it replaces ``path``
    (the old results are removed only then), otherwise it is removed and ``path`` stays as it was.

    The new folder is built as ``.<name>.partial-<pid>`` beside ``path``; the swap renames the old folder aside,
    renames the new one into place and then deletes the old one, so ``path`` always holds a complete set."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: is a file, expected a results folder")
    building = partial_path(path)
    _remove(building)
    os.makedirs(building)
    try:
        yield building
        old = None
        if os.path.isdir(path):
            old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{os.getpid()}")
            _remove(old)
            os.replace(path, old)
        os.replace(building, path)
    except BaseException:
        _remove(building)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def results_path(checkpoint: Mapping[str, Any], name: str) -> str:
    """``<run folder of the checkpoint>/<name>/``: where a mode's results go. Build them with
    ``modules.core.outputs.results_folder(path)``, which swaps the new set in only when complete, so a mode can run
    twice and an interrupted run keeps the earlier results."""
    root = checkpoint.get("results_root") or os.path.dirname(os.path.abspath(checkpoint["path"]))
    return os.path.join(root, name + checkpoint.get("results_suffix", ""))
