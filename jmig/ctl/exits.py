"""jmigctl's exit codes and the errors that carry them.

    0 ok                      1 the node refused, or the operation failed
    2 bad command line        3 a node cannot be reached (or went away)
    4 authentication failed or the secret file is unusable
    5 protocol error          6 a node is busy (too many unauthenticated connections)

Every failure jmigctl reports is a CtlError (or is turned into one in
main.py): an exit code, a stable error code (what `--json` prints as
{"error": {"code", "message"}}) and a message that says what to do.
"""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_PROTOCOL, EXIT_BUSY = range(7)

EXIT_TEXT = ("0 ok, 1 refused or failed, 2 bad command line, 3 node unreachable, "
             "4 authentication or secret file, 5 protocol error, 6 node busy")


class CtlError(Exception):
    exit = EXIT_FAILED
    code = "failed"

    def __init__(self, message: str, *, code: str | None = None, exit: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if exit is not None:
            self.exit = exit

    def __str__(self) -> str:
        return self.message


class UsageError(CtlError):
    exit = EXIT_USAGE
    code = "usage"


class Unreachable(CtlError):
    exit = EXIT_UNREACHABLE
    code = "unreachable"
