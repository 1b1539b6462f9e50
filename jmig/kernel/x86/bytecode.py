"""Python's compile() of a region's source, in a process of its own.

A node's kernel compiles regions in a worker thread (translate's
compile_elsewhere), so that its event loop goes on meanwhile.  The last
step, the builtin compile() of the generated source, is one C call that
holds the GIL from start to end: 7 ms for one of memtest's regions, 40-60
ms for the largest ones of `loop` (215,000 characters of source), during
which no other thread of the node runs at all.  So the worker hands the
source to a helper process, which compiles it and returns the code object
marshalled; marshal.loads takes about 0.1 ms for the same code, and the
worker waits for the helper without the GIL.

The helper is a bare interpreter (`python -c HELPER`: it imports nothing
of jmig; 19 MB resident, measured), one per process that compiles in the background,
started at the first compile and gone when that process exits (its stdin
closes).  If it cannot be started or dies, the code is compiled in the
calling thread, as before, and the next compile starts a new helper.
Requests and replies are pickles: (source, name, mode) in, ("ok",
marshalled code) or ("error", exception) out.
"""
from __future__ import annotations

import marshal
import pickle
import subprocess
import sys
import threading

HELPER = """
import marshal, pickle, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    try:
        text, name, mode = pickle.load(inp)
    except EOFError:
        break
    try:
        reply = ("ok", marshal.dumps(compile(text, name, mode)))
    except Exception as exc:
        reply = ("error", exc)
    pickle.dump(reply, out)
    out.flush()
"""

_LOCK = threading.Lock()
_HELPER: subprocess.Popen | None = None
stats = {"in_helper": 0, "here": 0}          # compiles done each way (this process)


def _helper() -> subprocess.Popen:
    global _HELPER
    if _HELPER is None or _HELPER.poll() is not None:
        _HELPER = subprocess.Popen([sys.executable, "-I", "-c", HELPER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return _HELPER


def helper_pid() -> int | None:
    """The helper process of this process, if one runs (it lives as long as
    this process: it exits when its stdin closes)."""
    return _HELPER.pid if _HELPER is not None and _HELPER.poll() is None else None


def compile_in_helper(text: str, name: str, mode: str):
    """compile(text, name, mode), done by the helper process (in this
    thread if the helper cannot do it).  Call it from a worker thread."""
    global _HELPER
    with _LOCK:
        try:
            helper = _helper()
            pickle.dump((text, name, mode), helper.stdin)
            helper.stdin.flush()
            status, value = pickle.load(helper.stdout)
        except (OSError, EOFError, pickle.UnpicklingError):
            if _HELPER is not None:
                _HELPER.kill()
                _HELPER.wait()
            _HELPER = None
            stats["here"] += 1
            return compile(text, name, mode)
    if status == "error":
        raise value
    stats["in_helper"] += 1
    return marshal.loads(value)
