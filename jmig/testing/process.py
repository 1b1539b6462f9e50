"""One real jmig-node process for tests: its own address with the original
ports P..P+3, a data directory, console and log files, and the cluster
secret file; started, stopped, killed, frozen and restarted on demand.

A node inside a network namespace (jmig.testing.netns) is the same process
started through `ip netns exec NS`, bound to every address of its host."""
from __future__ import annotations

import ctypes
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..ctl.main import main as jmigctl_main
from ..proto.control import CONTROL_OFFSET

PORT = 50001
_PR_SET_PDEATHSIG = 1

# Every process started by this module, so that a run can check that none
# is left behind (the plugin does, at the end of a session).
STARTED: list["NodeProcess"] = []


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it
    dies, so that a test run killed outright leaves no node behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class NodeError(Exception):
    """A node did not start, or did not show what a test waited for."""


class NodeProcess:
    """A jmig-node process.  `addr` is where the test reaches it; `host`
    is the address it binds (0.0.0.0 inside a namespace)."""

    def __init__(self, tmp: Path, secret_file: Path, name: str, args=(), env=None,
                 host: str | None = None, port: int = PORT, netns: str | None = None,
                 reach: str | None = None):
        if host is None:
            raise ValueError("a node needs an address (host=)")
        self.host = host
        self.port = port
        self.name = name
        self.netns = netns
        self.reach = reach or host
        self.data_dir = tmp / name
        self.stdout_path = tmp / f"{name}.out"
        self.stderr_path = tmp / f"{name}.err"
        self.secret_file = secret_file
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.stopped = False          # SIGSTOPped

    def __repr__(self) -> str:
        return f"<node {self.name} {self.addr}>"

    @property
    def addr(self) -> str:
        """HOST:P as jmigctl and other nodes name this node."""
        return f"{self.reach}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "jmig.node.main", "--host", self.host, "--port",
               str(self.port), "--name", self.name, "--data-dir", str(self.data_dir),
               "--secret-file", str(self.secret_file), "--log-format", "json", *self.args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, wait: bool = True, stdout=None) -> "NodeProcess":
        """Start the process (console to stdout_path, or to the file
        descriptor `stdout`); with wait, return once it accepts connections."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=out if stdout is None else stdout,
                                         stderr=err, env=self.env, preexec_fn=die_with_parent)
        self.stopped = False
        STARTED.append(self)
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Return once the control port accepts a connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeError(f"node {self.name} exited with {self.proc.returncode}: "
                                f"{self.log()[-2000:]}")
            try:
                with socket.create_connection((self.reach, self.port + CONTROL_OFFSET),
                                              timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise NodeError(f"node {self.name} did not start listening within {timeout:g} s")

    # -- driving it -------------------------------------------------------------------
    def ctl_env(self) -> dict:
        return {"JMIG_NODE": self.addr, "JMIG_SECRET_FILE": str(self.secret_file),
                "HOME": os.environ.get("HOME", "/tmp")}

    def ctl(self, *argv) -> tuple[int, str, str]:
        """Run jmigctl against this node in this process: (exit code,
        stdout, stderr).  Blocks; from trio, run it in a thread."""
        out, err = io.StringIO(), io.StringIO()
        code = jmigctl_main([*argv], environ=self.ctl_env(), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def ctl_subprocess(self, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run jmigctl as a process of its own against this node."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JMIG_")}
        env.update(self.ctl_env())
        return subprocess.run([sys.executable, "-m", "jmig.ctl.main", *argv], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def console(self) -> str:
        """Everything the node's envs have printed (its stdout)."""
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        """The node's log (stderr, one JSON object per line)."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_console(self, pattern: str, timeout: float = 20.0,
                         since: int = 0) -> re.Match:
        """The first match of the regular expression `pattern` in the
        console after offset `since` (a len() of an earlier console());
        NodeError naming the last lines if none appears within timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console(), since)
            if m:
                return m
            if time.monotonic() > deadline:
                tail = "\n".join(self.console()[since:].splitlines()[-10:])
                raise NodeError(f"{self.name}: no {pattern!r} on the console within "
                                f"{timeout:g} s; last lines:\n{tail}")
            time.sleep(0.03)

    # -- failures ---------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        if self.alive:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM and wait: an orderly shutdown.  Its exit code.  After
        `grace` seconds a second SIGTERM cuts the shutdown short, and 5
        seconds after that SIGKILL ends it."""
        if self.alive:
            self.sigcont()
            for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                self.proc.send_signal(sig)
                try:
                    return self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    grace = 5.0
            return self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def sigstop(self) -> None:
        """Freeze the process (SIGSTOP): its sockets stay open, nothing answers."""
        if self.alive:
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def sigcont(self) -> None:
        if self.alive and self.stopped:
            self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def restart(self, wait: bool = True, kill: bool = False) -> "NodeProcess":
        """Stop (or kill) and start again on the same address and data dir."""
        self.kill() if kill else self.stop()
        return self.start(wait=wait)
