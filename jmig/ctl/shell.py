"""jmigctl shell: the original project's commands, as its manual wrote them.

    ps | pause ENV | resume ENV | kill ENV | copy ENV | ls
    save ENV NAME | load NAME
    migrate_send_normal ENV REMOTE_IP REMOTE_PORT LOCAL_IP
    migrate_recv_normal
    migrate_send_pgfault ENV REMOTE_IP REMOTE_PORT LOCAL_IP LOCAL_PORT
    migrate_recv_pgfault
    migrate_send_precopy ENV REMOTE_IP REMOTE_PORT            (jmig's own)
    spawn PROGRAM [ARGS] | console | info | vmmap ENV | node HOST:P | help | exit

REMOTE_PORT is the destination node's P.  As in the original, a normal
migration sent from the shell keeps the source env, paused.  LOCAL_IP
(and LOCAL_PORT) name where the destination reaches this node's page
server; jmig nodes announce it themselves, so they are accepted and
ignored.
"""
from __future__ import annotations

import shlex
import sys

import trio

from .client import RemoteError
from . import main as ctlmain

HELP = __doc__.split("\n\n")[1]


class Shell:
    def __init__(self, ctx):
        self.ctx = ctx
        self.node = ctx.node

    def prompt(self) -> str:
        return f"jmig {self.node}> "

    def loop(self, lines=None) -> int:
        interactive = lines is None and sys.stdin.isatty()
        src = lines if lines is not None else sys.stdin
        if interactive:
            self.ctx.say(f"jmig shell on {self.node}; type help for the commands.")
        while True:
            if interactive:
                try:
                    line = input(self.prompt())
                except EOFError:
                    self.ctx.say("")
                    return 0
            else:
                line = src.readline() if hasattr(src, "readline") else next(src, "")
                if not line:
                    return 0
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line in ("exit", "quit"):
                return 0
            self.execute(line)

    def execute(self, line: str) -> int:
        """Run one command line; returns jmigctl's exit code for it."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.ctx.say(f"error: {exc}")
            return ctlmain.EXIT_USAGE
        cmd, rest = words[0], words[1:]
        if cmd == "help":
            self.ctx.say(HELP)
            return 0
        if cmd == "node":
            if len(rest) != 1:
                self.ctx.say("usage: node HOST:P")
                return ctlmain.EXIT_USAGE
            self.node = rest[0]
            return 0
        if cmd == "migrate_recv_normal" or cmd == "migrate_recv_pgfault":
            return self._recv(cmd)
        argv = self._translate(cmd, rest)
        if argv is None:
            self.ctx.say(f"unknown command {cmd!r}; type help")
            return ctlmain.EXIT_USAGE
        return ctlmain.main(["--node", self.node, *(["--secret-file", self.ctx.args.secret_file]
                                                    if self.ctx.args.secret_file else []), *argv],
                            environ=self.ctx.environ, stdout=self.ctx.out, stderr=self.ctx.out)

    def _translate(self, cmd: str, rest: list[str]) -> list[str] | None:
        simple = {"ps", "pause", "resume", "kill", "copy", "ls", "save", "load", "spawn",
                  "info", "vmmap", "console", "stats"}
        if cmd in simple:
            return [cmd, *rest]
        if cmd == "migrate_send_normal" and len(rest) >= 3:
            return ["migrate", rest[0], "--to", f"{rest[1]}:{rest[2]}", "--method", "normal",
                    "--keep"]
        if cmd == "migrate_send_pgfault" and len(rest) >= 3:
            return ["migrate", rest[0], "--to", f"{rest[1]}:{rest[2]}", "--method", "pgfault"]
        if cmd == "migrate_send_precopy" and len(rest) >= 3:
            return ["migrate", rest[0], "--to", f"{rest[1]}:{rest[2]}", "--method", "precopy"]
        return None

    def _recv(self, cmd: str) -> int:
        ctx = self.ctx
        host, port = self.node.rsplit(":", 1)
        offset = 0 if cmd == "migrate_recv_normal" else 1
        ctx.say(f"Waiting for connections... (port {int(port) + offset})")

        async def wait():
            return await ctx.call("wait_arrival", {}, node=self.node)
        try:
            info = trio.run(wait)
        except RemoteError as exc:
            ctx.say(f"error: {exc.message}")
            return ctlmain.EXIT_FAILED
        except KeyboardInterrupt:
            return ctlmain.EXIT_FAILED
        ctx.say(f"Process Migration Finished, You can resume New Env: {info['envid']}")
        return 0
