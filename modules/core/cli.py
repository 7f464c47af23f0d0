"""The command-line contract: every bad input is one ``error: ...`` line and a non-zero exit status, without a
traceback; Ctrl-C and SIGTERM end with one line too, once partial outputs are removed."""
import argparse
import re
import sys
from typing import Callable, Optional

from modules.core.errors import UserError
from modules.core.outputs import Terminated, handle_termination

MAX_LINE = 400          # an error line longer than this is cut (the start names the file and the problem);
                        # 400 keeps the longest hints whole (a terminal wraps a long line; a cut hint is lost)



class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one "error: ..." line (no usage block) and exit status 2, like every
    other bad input of the project's commands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print_error(f"{message} (see {self.prog} --help)")
        sys.exit(2)


def _end_progress_lines() -> None:
    """Close the progress bars still on screen, so that the error starts a line of its own instead of being
    appended to the bar's line."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the error itself: the newline below still comes
            pass


def _shorten_paths(line: str) -> str:
    """Long paths (a temporary folder, a cluster's scratch disk) as ``.../<a>/<folder>/<name>``: the end of a path
    names the file, the start rarely helps."""
    def short(match: "re.Match") -> str:
        path = match.group(0)
        parts = path.rstrip("/").split("/")
        return ".../" + "/".join(parts[-3:]) if len(path) > 40 and len(parts) > 4 else path

    return re.sub(r"/[^\s:,;()']+", short, line)


def print_error(message: str) -> None:
    """``error: <message>`` as one line of at most MAX_LINE characters on stderr, on a line of its own (long
    paths shortened first, then the end cut)."""
    _end_progress_lines()
    line = "error: " + " ".join(str(message).split())            # one line whatever the message held
    if len(line) > MAX_LINE:
        line = _shorten_paths(line)
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE - 3] + "..."
    sys.stderr.flush()
    print(line, file=sys.stderr)


def exit_status(command: Callable[[], Optional[int]]) -> int:
    """Run a command-line tool's work: its own exit status (0 when it returns None); after a ``UserError``,
    2 with its message as one ``error: ...`` line, without a traceback; after Ctrl-C 130 and after SIGTERM
    143, each with one line, once the ``with`` blocks on the way have removed their partial outputs."""
    handle_termination()
    try:
        status = command()
    except UserError as error:
        print_error(str(error))
        return 2
    except KeyboardInterrupt:
        print_error("interrupted (Ctrl-C); partial results removed, earlier files kept")
        return 130
    except Terminated:
        print_error("terminated (SIGTERM); partial results removed, earlier files kept")
        return 143
    return 0 if status is None else status
