"""The exception types: ``TetherError`` for user mistakes, and the refusals the web app answers with a status.

A ``TetherError`` carries a message that names the problem and a ``fix`` that tells the user what to do. The CLI
prints both on one or two lines and exits non-zero, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations


class TetherError(Exception):
    """A user-facing error: bad input, a missing file, a wrong option."""

    def __init__(self, message: str, fix: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class TooLarge(TetherError):
    """Input past a size limit (the web app answers 413)."""


class Forbidden(TetherError):
    """The caller may not do this (HTTP 403). Also used for objects that do not exist, so nothing leaks."""


class NotFound(TetherError):
    """No such object (HTTP 404); only for callers allowed to know what exists."""


class Conflict(TetherError):
    """The request clashes with the current state, e.g. a second submit of one assignment (HTTP 409)."""
