"""structlog configuration, done once in each entry point (never in modules).

Console renderer when stderr is a terminal, JSON lines otherwise, unless
told.  Logs go to stderr; a node's stdout is its console.  A node logs
through a spool (jmig/spool.py), so that a stderr nobody reads never
stalls it: lines that do not fit are dropped and counted, and the next
line written says how many bytes were lost."""
from __future__ import annotations

import json
import logging
import sys

import structlog

from .spool import Spool

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "console"     # set by configure(): "console" or "json"
DEBUG = False          # set by configure(): per-chunk events cost a call each, so
                       # the hot paths emit them only when someone will see them


_spool: Spool | None = None


def configure(fmt: str | None = None, level: str = "info", stream=None,
              spool: bool = False) -> None:
    """spool: write through a spool thread that never blocks the caller
    (a daemon); close() at exit writes what is left."""
    global DEBUG, FORMAT, _spool
    DEBUG = level == "debug"
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    FORMAT = fmt
    close()
    out = stream
    if spool:
        out = _spool = Spool(stream, _dropped_notice(fmt), name="log")
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def say(text: str) -> None:
    """A line for the person running the program (stderr), in order with the
    log: through the log's spool when there is one, so the two never
    interleave inside a line."""
    if _spool is not None:
        _spool.write(text + "\n")
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def close() -> None:
    """Write out what the log spool holds (if any) and stop it."""
    global _spool
    if _spool is not None:
        _spool.close()
        _spool = None


def _dropped_notice(fmt: str):
    if fmt == "json":
        return lambda n: json.dumps({"event": "log output dropped", "bytes": n,
                                     "level": "warning"}) + "\n"
    return lambda n: f"[log: {n} bytes dropped]\n"
