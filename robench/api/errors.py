"""Exceptions that the CLI turns into one readable line and an exit code.

Anything a user can fix (a typo in a name, a bad value, a missing file) is a
:class:`UserError` and exits with 2; anything else is a bug or an environment fault
and exits with 1.
"""
from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: an error is one line."""
    return " ".join(str(text).split())


class RobenchError(Exception):
    """Base of robench's own errors; ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class UserError(RobenchError):
    """Bad input: the message says what is wrong and, where it can, what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value, key or file is invalid."""


class UnknownPluginError(UserError):
    """No plugin of that kind carries that name."""


class PluginLoadError(UserError):
    """A plugin was found but cannot be used (import error, wrong type, bad params).

    It exits with 2 because the user named it and can choose another or fix the
    installation; the message names the plugin and its distribution.
    """


class DataNotFoundError(UserError):
    """A dataset's files are missing or damaged.

    Plugins say what they looked for and where; robench adds how to get the data.
    """


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model.

    The message names the file and, for a mismatch, what the weights were built for.
    """


class WriteError(UserError):
    """An output file or folder cannot be written: no space left, over a size limit,
    read-only, or a regular file where a folder should be.

    The user fixes it (frees space, picks another folder), so it exits with 2; the
    message names the path and the operating system's reason (``os.strerror``).
    """
