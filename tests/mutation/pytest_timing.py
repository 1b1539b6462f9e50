"""pytest plugin for mutate.py's unmutated run (`-p tests.mutation.pytest_timing`).

Under `coverage run`, it switches coverage's context to "NODEID|setup",
"|run" and "|teardown" around each test's phases (as pytest-cov's
--cov-context=test does), and back to "" between tests: what runs outside
every test -- imports above all, which coverage, started before pytest,
sees too -- keeps the empty context.  It also puts the context in
$JMIG_MUTATE_CONTEXT, under which a jmig-node daemon started then
measures itself (mutate.py's coveragerc-daemons).

At the end it writes to $JMIG_MUTATE_TIMING a JSON object with every
test's node id in the order they ran, its time (setup + call + teardown),
the whole session's time, the jmig modules imported by the end, and the
modules imported from outside the working directory (forkserver.py
preloads them)."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

_start = 0.0
_durations: dict[str, float] = {}


def pytest_sessionstart(session):
    global _start
    _start = time.monotonic()


def _context(name: str) -> None:
    # A jmig-node daemon started from here on is measured under this
    # context (mutate.py's coveragerc-daemons reads it when it starts).
    os.environ["JMIG_MUTATE_CONTEXT"] = name
    try:
        import coverage
    except ImportError:
        return
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    _context(item.nodeid + "|setup")
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _context(item.nodeid + "|run")
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    _context(item.nodeid + "|teardown")
    yield
    _context("")


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("JMIG_MUTATE_TIMING")
    if not path:
        return
    # Start-up before sessionstart (imports, plugins) is not counted: the
    # caller adds the process's own wall time.
    data = {"order": list(_durations), "durations": _durations,
            "seconds": time.monotonic() - _start,
            "modules": sorted(m for m in sys.modules if m.startswith("jmig")),
            "outside": _outside()}
    with open(path, "w") as f:
        json.dump(data, f)


def _outside() -> list[str]:
    here = os.getcwd() + os.sep
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if name != "__main__" and f and not os.path.abspath(f).startswith(here) \
                and not name.startswith(("jmig", "tests", "conftest")):
            out.append(name)
    return sorted(out)
