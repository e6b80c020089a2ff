"""The project's error type: a mistake in what the user gave us, said in one line."""

__all__ = ["RecfunnelError", "DataError", "ConfigError"]


class RecfunnelError(ValueError):
    """A user mistake. The CLI prints ``str(err)`` on one line and exits 2, no traceback."""


class DataError(RecfunnelError):
    """Bad input data: the message names the file, column or row and what was expected."""


class ConfigError(RecfunnelError):
    """A bad option or config field: the message names the field and the bad value."""
