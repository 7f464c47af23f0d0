"""User-facing errors: ``run.py`` prints their message as one line and exits non-zero, without a traceback."""
import argparse
import sys
from typing import Callable, Optional


class UserError(Exception):
    """Bad input from the user (a file, a key, a value); the message says what was expected."""


class ConfigError(UserError):
    """An invalid YAML config: the message names the file, the key path and what was expected."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the configured networks."""


class ConfigWarning(UserWarning):
    """A config key that is accepted but has no effect (legacy FOMM / keypoint-mask keys)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one "error: ..." line (no usage block) and exit status 2, like every
    other bad input of the project's commands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def exit_status(command: Callable[[], Optional[int]]) -> int:
    """Run a command-line tool's work: its own exit status (0 when it returns None), or 2 after printing a
    ``UserError`` as one ``error: ...`` line, without a traceback."""
    try:
        status = command()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if status is None else status
