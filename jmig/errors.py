"""The one base of every error jmig reports to a person or to a peer.

Each carries a stable `code` (kebab-case, as it travels on the wire and
as jmigctl prints it in brackets) and a `message` that says what is wrong
and, where it can, what to do.  Layers raise their own subclasses
(KernelError, StreamError, the protocol errors, MigrationError, ...);
whoever answers a request catches `Error` once.
"""
from __future__ import annotations


class Error(Exception):
    code: str = "failed"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


def leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups (trio's
    nurseries wrap what a task raised)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
