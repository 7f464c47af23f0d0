"""User-facing errors: the commands print their message as one line and exit non-zero, without a traceback
(modules/core/cli.py prints them)."""


class UserError(Exception):
    """Bad input from the user (a file, a key, a value); the message says what was expected."""


class ConfigError(UserError):
    """An invalid YAML config: the message names the file, the key path and what was expected."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the configured networks."""


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


class ConfigWarning(UserWarning):
    """A config key that is accepted but has no effect (legacy FOMM / keypoint-mask keys)."""

