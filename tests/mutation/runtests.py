"""cosmic-ray's test command when a target selects tests:
`python tests/mutation/runtests.py MODULE_DIR` (MODULE_DIR is the module's
.mutants dir, run from its tree).

Finds the lines the mutant changed (the module in the tree against
MODULE_DIR/pristine.py), and runs pytest -x on only the tests that
executed them unmutated (selection.json, see selection.py).  Exit status
as pytest's: non-zero kills the mutant.  If no test executed those lines,
exits 0 (the mutant survives) and says NOT_COVERED, which the report
counts apart from the survivors that tests ran.  Past its timeout (the
selected tests' unmutated time, times the factor, at least min_timeout)
the tests are stopped and the mutant counts as killed (an endless loop).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection  # noqa: E402

NOT_COVERED = "jmig-mutate: NOT_COVERED"
SELECTION_ERROR = "jmig-mutate: SELECTION_ERROR"


def main(argv: list[str]) -> int:
    d = Path(argv[0])
    sel = selection.load(d / "selection.json")
    mutated = (Path(sel["tree"]) / sel["module"]).read_text()
    lines = selection.changed_lines((d / "pristine.py").read_text(), mutated)
    if not lines:
        print("jmig-mutate: the module is unchanged: running every test")
        tests = sel["order"]
    else:
        tests = selection.tests_for(sel, lines)
    where = ",".join(map(str, sorted(lines)))
    if not tests:
        print(f"{NOT_COVERED}: no test runs line {where} of {sel['module']}")
        return 0
    print(f"jmig-mutate: line {where}: {len(tests)} of {len(sel['order'])} tests", flush=True)
    # One node id a line, read by pytest as arguments (@file): ids of
    # parametrized tests hold brackets, spaces and quotes.
    args = d / "selected.txt"
    args.write_text("".join(t + "\n" for t in tests))
    need = sel["overhead"] + sum(sel["durations"].get(t, 0.0) for t in tests)
    timeout = max(sel["min_timeout"], sel["timeout_factor"] * need)
    rc = run_pytest(d, ["-x", "-q", "-p", "no:cacheprovider", f"@{args}"], timeout)
    if rc is None:
        print(f"jmig-mutate: timeout after {timeout:.0f} s")
        return 1
    if rc in (4, 5):
        # pytest found none of the ids (usage error, nothing collected):
        # the selection's fault, not the tests'; the report lists it apart.
        print(f"{SELECTION_ERROR}: pytest exit {rc} on the selected ids")
    return rc


def run_pytest(d: Path, args: list[str], timeout: float) -> int | None:
    """pytest's exit status (None: stopped at the timeout), by the fork
    server if mutate.py started one (forkserver.py), else a new process."""
    sock = d / "forkserver.sock"
    if sock.exists():
        # The server preloaded pytest's plugins (hypothesis, pytest-trio):
        # too late to rewrite their asserts, which only word their messages.
        quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
        try:
            return _by_server(sock, d / "pytest.out", quiet + args, timeout)
        except (OSError, ValueError) as e:
            print(f"jmig-mutate: fork server unusable ({e!r}): a new process", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def _by_server(sock: Path, out: Path, args: list[str], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall((json.dumps({"args": args, "out": str(out)}) + "\n").encode())
        f = s.makefile("r")
        pid = int(f.readline())          # ValueError if the server died: a new process
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            line = f.readline()
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            return None
        finally:
            sys.stdout.write(out.read_text(errors="replace") if out.exists() else "")
            sys.stdout.flush()
        return int(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
