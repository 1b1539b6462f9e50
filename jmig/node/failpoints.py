"""Named crash points for fault-injection tests of the migration protocols.

A test starts a real jmig-node with JMIG_FAILPOINTS=name[,name...]; when
the node reaches a listed point it exits at once with status 137, as if
killed by SIGKILL (no cleanup, no goodbye on any socket).  In-process tests
use arm(name) to make the point raise Crash instead.  Unlisted points cost
one set lookup.
"""
from __future__ import annotations

import os

_FROM_ENV = frozenset(p for p in os.environ.get("JMIG_FAILPOINTS", "").split(",") if p)
_ARMED: set[str] = set()


class Crash(Exception):
    """An armed failpoint fired (in-process tests)."""


def arm(name: str) -> None:
    _ARMED.add(name)


def disarm_all() -> None:
    _ARMED.clear()


def failpoint(name: str) -> None:
    if name in _FROM_ENV:
        os._exit(137)
    if name in _ARMED:
        _ARMED.discard(name)
        raise Crash(name)
