"""Errors a user can cause, each with its own documented exit code.

The CLI prints ``jaxconv: error: <message>`` on one line and exits with ``exit_code``;
``--debug`` shows the traceback as well (the exit code stays the same).
"""


class JaxconvError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 1


class ConfigError(JaxconvError):
    """Unknown experiment, unknown or ill-typed config key, impossible value."""

    exit_code = 2


class DataError(JaxconvError):
    """Missing, corrupt, truncated or foreign data file; bad shapes or labels."""

    exit_code = 3


class CheckpointError(JaxconvError):
    """Checkpoint missing, corrupt, or written by a different model."""

    exit_code = 4


class NonFiniteError(JaxconvError):
    """The loss or gradient norm became NaN/Inf during training."""

    exit_code = 5


class StorageError(JaxconvError):
    """The work directory cannot be written: not a directory, permissions, disk full, file-size limit."""

    exit_code = 6


class WorkdirBusy(StorageError):
    """Another training process holds the work directory's lock."""


EXIT_CODES = {cls.__name__: cls.exit_code
              for cls in (JaxconvError, ConfigError, DataError, CheckpointError, NonFiniteError, StorageError)}
