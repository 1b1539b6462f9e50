"""structlog configuration, done once in each entry point (never in modules).

Console renderer when stderr is a terminal, JSON lines otherwise, unless
told.  Logs go to stderr; a node's stdout is its console."""
from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")
DEBUG = False          # set by configure(): per-chunk events cost a call each, so
                       # the hot paths emit them only when someone will see them


def configure(fmt: str | None = None, level: str = "info", stream=None) -> None:
    global DEBUG
    DEBUG = level == "debug"
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
