"""The project's error types: a mistake in what the user gave us, said in one line.

Each carries the exit code the CLI returns for it (documented in the README): 2 for a user
mistake, 3 for data that is corrupt (a shard whose content does not match its checksum, an id
outside its table).
"""

__all__ = ["RecfunnelError", "DataError", "ConfigError", "CorruptDataError", "Terminated"]


class RecfunnelError(ValueError):
    """A user mistake. The CLI prints ``str(err)`` on one line and exits ``exit_code`` (2), no traceback."""

    exit_code = 2


class DataError(RecfunnelError):
    """Bad input data: the message names the file, column or row and what was expected."""


class ConfigError(RecfunnelError):
    """A bad option or config field: the message names the field and the bad value."""


class CorruptDataError(DataError):
    """Stored data that is not what was written (a flipped byte, a truncated shard, an id out of its
    table's range): the message names the shard and block. Exit code 3: retrying will not help."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting the job, torchrun stopping a rank), raised by the CLI's
    handler: it unwinds like Ctrl-C, so the MLflow run is marked KILLED and temporary output
    removed, then the exit code is 143."""

    exit_code = 143
