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

import os
import signal
import subprocess
import sys
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
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             f"@{args}"], stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"jmig-mutate: timeout after {timeout:.0f} s")
        return 1
    if rc in (4, 5):
        # pytest found none of the ids (usage error, nothing collected):
        # the selection's fault, not the tests'; the report lists it apart.
        print(f"{SELECTION_ERROR}: pytest exit {rc} on the selected ids")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
