"""A user's mistake (a path that is not there, a flag value that does not fit): jobs print it as one line, exit 2.

The library raises these where it detects what the user gave is wrong; the message says what to do. Anything
else is our bug and keeps its traceback (jobs/cli.py). This module imports nothing, so every package can use it.
"""
from __future__ import annotations


class UserError(Exception):
    """What the user gave cannot work: the message names it and says what to give instead."""


class UserPathError(UserError, FileNotFoundError):
    """A path the user gave does not exist, cannot be read, or does not hold what it should."""


class UserValueError(UserError, ValueError):
    """A flag or file value the user gave is not valid."""
