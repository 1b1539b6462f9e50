#!/usr/bin/env python3
"""jmig's quick start: one file, only python3 needed.

    python3 dev.py demo      # set up .venv on first use, then play the two-node demo
    python3 dev.py test      # set up .venv (with test extras) on first use, then run the tests
    python3 dev.py test --fast   # the same without the tests marked slow (under a minute)
    python3 dev.py bench     # run every benchmark (bench/run.py)
    python3 dev.py shell     # print the command that activates the venv

The virtual environment lives in ./.venv and is reinstalled when
pyproject.toml changes.  Extra arguments are passed through, e.g.
`python3 dev.py test -k cpu -x`.  `test --fast` leaves out the tests marked
`@pytest.mark.slow` (Unicorn differential runs, whole programs in lockstep,
long programs): the inner loop for development; the CI runs them all.
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


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """Create .venv and install jmig with its test extras, once per pyproject."""
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing jmig and its test extras into .venv ...", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(_fingerprint())


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv()
    if cmd == "demo":
        args = [str(BIN / "jmigctl"), "demo", *rest]
    elif cmd == "test":
        if "--fast" in rest:
            # Everything but @pytest.mark.slow (the CI runs all).
            rest = ["-m", "not slow", *(a for a in rest if a != "--fast")]
        # The slowest tests are listed at the end: where the suite's time goes.
        args = [str(BIN / "python"), "-m", "pytest", "-q", "--durations=15", *rest]
    elif cmd == "bench":
        args = [str(BIN / "python"), str(ROOT / "bench" / "run.py"), *rest]
    elif cmd == "shell":
        print(f"source {BIN / 'activate'}")
        return 0
    else:
        print(f"dev.py: unknown command {cmd!r}; try demo, test, bench or shell", file=sys.stderr)
        return 2
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
