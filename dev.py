#!/usr/bin/env python3
"""jmig's quick start: one file, only python3 needed.

    python3 dev.py demo      # set up .venv on first use, then play the two-node demo
    python3 dev.py test      # set up .venv (with test extras) on first use, then run the tests
    python3 dev.py test --fast   # the same without the tests marked slow (under a minute)
                             # (both in two worker processes; add -n 0 for one)
    python3 dev.py bench     # run every benchmark (bench/run.py)
    python3 dev.py shell     # print the command that activates the venv
    python3 dev.py mutate [PATH] [--sample N]   # mutation testing (docs/mutation.md)

The virtual environment lives in ./.venv and is reinstalled when
pyproject.toml changes.  Extra arguments are passed through, e.g.
`python3 dev.py test -k cpu -x`.  `test --fast` leaves out the tests marked
`@pytest.mark.slow` (Unicorn differential runs, whole programs in lockstep,
long programs): the inner loop for development; the CI runs them all.
`mutate` installs the `mutate` extra (cosmic-ray, coverage) on first use and runs
tests/mutation/mutate.py: minutes for a sample, hours for everything.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".jmig-installed"


def _fingerprint(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return digest if extras == "test" else f"{digest} {extras}"


def ensure_venv(extras: str = "test") -> None:
    """Create .venv and install jmig with the given extras (test, or
    test,mutate), once per pyproject and set of extras; a venv with the
    mutate extra serves the test commands too."""
    if STAMP.exists() and STAMP.read_text() in (_fingerprint(extras),
                                                _fingerprint("test,mutate")):
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"dev.py: installing jmig and its extras ({extras}) into .venv ...", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}[{extras}]"],
        check=True,
    )
    STAMP.write_text(_fingerprint(extras))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv("test,mutate" if cmd == "mutate" else "test")
    if cmd == "demo":
        args = [str(BIN / "jmigctl"), "demo", *rest]
    elif cmd == "test":
        if "--fast" in rest:
            # Everything but @pytest.mark.slow (the CI runs all).
            rest = ["-m", "not slow", *(a for a in rest if a != "--fast")]
        # Two worker processes (pytest-xdist; an idle worker takes tests queued
        # for the other; `-n 0` runs in this one).  The slowest tests are
        # listed at the end: where the suite's time goes.
        args = [str(BIN / "python"), "-m", "pytest", "-q", "-n", "2", "--dist", "worksteal",
                "--durations=15", *rest]
    elif cmd == "bench":
        args = [str(BIN / "python"), str(ROOT / "bench" / "run.py"), *rest]
    elif cmd == "mutate":
        args = [str(BIN / "python"), str(ROOT / "tests" / "mutation" / "mutate.py"), *rest]
    elif cmd == "shell":
        print(f"source {BIN / 'activate'}")
        return 0
    else:
        print(f"dev.py: unknown command {cmd!r}; try demo, test, bench, mutate or shell", file=sys.stderr)
        return 2
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
