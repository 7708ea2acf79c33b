"""What the user can fix, as exception types (the ground floor: every stage raises them).

The command line reports a ``UserError`` as one line and exit code 2: the message names the file, field,
name or option to change. Anything else that escapes a command is a bug in the suite or in a method: exit
code 1 and a hint to rerun with ``--debug`` for the traceback. So raise one of these where bad input is
detected, and let every other exception mean "this should not have happened".
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, a bad name or an environment the user can fix (exit code 2)."""


class InputError(UserError, ValueError):
    """A value given by the user (an option, a file's content, a name) cannot be used."""


class UnknownNameError(UserError, KeyError):
    """A method, dataset, metric or protocol name the suite does not know; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EnvironmentUnavailableError(UserError, RuntimeError):
    """Something the run needs is not available on this machine (weights, a package, a device, a network)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there; the message names it and what to run or pass."""
