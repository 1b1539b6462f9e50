"""A pytest fork server for runtests.py: `python forkserver.py SOCKET PRELOAD`,
started by mutate.py in the module's tree (cwd and PYTHONPATH) before
cosmic-ray exec, stopped after.

Starting pytest costs seconds of imports (hypothesis, trio, numpy...) that
would dwarf a mutant's few selected tests.  The server imports, once, the
modules listed in the JSON file PRELOAD -- those the unmutated run had
loaded from outside the tree (never jmig nor the tests: the mutant must be
imported fresh) -- and then, for each request (one line of JSON on the
unix socket: {"args": [...], "out": path}), forks a child that runs
pytest.main(args) with its output into `out`, answers the child's pid,
then its exit status.  One request at a time, as cosmic-ray runs mutants.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import sys


def preload(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:            # noqa: BLE001 -- a module that will not import alone
            pass


def child(req: dict) -> int:
    os.setsid()                          # runtests.py kills the group on a timeout
    fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import pytest
        code = int(pytest.main(req["args"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:           # noqa: BLE001 -- reported as a failure
        print(f"forkserver: {e!r}")
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    while True:
        conn, _ = srv.accept()
        with conn:
            line = conn.makefile("r").readline()
            if not line:
                continue
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                srv.close()
                conn.close()
                os._exit(child(req))
            try:
                conn.sendall(f"{pid}\n".encode())
            except OSError:
                pass
            _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        preload(json.load(f))
    serve(sys.argv[1])
