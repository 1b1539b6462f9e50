"""Real jmig-node processes for tests: each on its own loopback address with
the original ports, a shared secret file, and its own data directory."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from jmig.ctl.main import main as jmigctl_main

from .cluster import PORT, next_host


class Daemon:
    def __init__(self, tmp: Path, secret_file: Path, name: str, args=(), env=None,
                 host: str | None = None, port: int = PORT):
        self.host = host or next_host()
        self.port = port
        self.name = name
        self.data_dir = tmp / name
        self.stdout_path = tmp / f"{name}.out"
        self.stderr_path = tmp / f"{name}.err"
        self.secret_file = secret_file
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True, stdout=None) -> "Daemon":
        """stdout: a file descriptor for the node's console instead of
        the file at stdout_path."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            if stdout is not None:
                out = stdout
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jmig.node.main", "--host", self.host, "--port",
                 str(self.port), "--name", self.name, "--data-dir", str(self.data_dir),
                 "--secret-file", str(self.secret_file), "--log-format", "json", *self.args],
                stdout=out, stderr=err, env=self.env)
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.stderr_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port + 3), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start listening")

    def ctl(self, *argv, json: bool = False) -> tuple[int, str, str]:
        """Run jmigctl's main() against this node; (exit code, stdout, stderr)."""
        import io
        out, err = io.StringIO(), io.StringIO()
        env = {"JMIG_NODE": self.addr, "JMIG_SECRET_FILE": str(self.secret_file),
               "HOME": os.environ.get("HOME", "/tmp")}
        code = jmigctl_main([*argv], environ=env, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def ctl_subprocess(self, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, JMIG_NODE=self.addr, JMIG_SECRET_FILE=str(self.secret_file))
        return subprocess.run([sys.executable, "-m", "jmig.ctl.main", *argv], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def console(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        return self.proc.returncode if self.proc else 0


def make_secret(tmp: Path) -> Path:
    p = tmp / "secret"
    p.write_text(secrets.token_hex(32) + "\n")
    p.chmod(0o600)
    return p
