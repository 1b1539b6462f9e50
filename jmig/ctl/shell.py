"""jmigctl shell: the original project's commands, as its manual wrote them.

    ps | pause ENV | resume ENV | kill ENV | copy ENV | ls
    save ENV NAME | load NAME
    migrate_send_normal ENV REMOTE_IP REMOTE_PORT LOCAL_IP
    migrate_recv_normal
    migrate_send_pgfault ENV REMOTE_IP REMOTE_PORT LOCAL_IP LOCAL_PORT
    migrate_recv_pgfault
    migrate_send_precopy ENV REMOTE_IP REMOTE_PORT                  (jmig's own)
    spawn PROGRAM [ARGS] | info | stats | vmmap ENV | jobs | console
    console on|off | trace on|off | node [HOST:P] | help [COMMAND] | exit

REMOTE_PORT is the destination node's port: P (50001) for a normal or
pre-copy migration; for pgfault its pgfault port P+1 (50002), as in the
original, or its P.  LOCAL_IP is this node's address and LOCAL_PORT its
page-server port P+2 (50003), or its P: the destination fetches pages
from there.  As in the original, a normal migration sent from the shell
keeps the source env, paused, and a pgfault migration moves a page only
when the process faults on it (no background push).  Every other jmigctl command works too
(migrate 4100 --to HOST:P ..., image export ..., cancel ID, ...).

`console on` shows the node's console between the prompts; `trace on`
prints the original's per-step lines (Send Page: 0x00800000, Sequence: 1,
...) for migrations, saves and loads, and `migrate_recv_*` then shows the
receiving side's.  Tab completes commands, env ids and node addresses;
Up and Down walk the history (kept in ~/.local/state/jmig/shell_history);
Ctrl-C cancels the line, Ctrl-D or exit leaves.
"""
from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from pathlib import Path

import trio

from ..proto.wire import parse_node
from .client import ControlClient
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, UsageError
from .failures import bad_node, classify, report

try:
    import readline
except ImportError:              # not on every platform; the shell works without it
    readline = None

HELP = __doc__.split("\n\n")[1]
HISTORY_LENGTH = 1000

# The shell's own commands: their parameters (NAME... takes the rest) and help.
SPECS = {
    "ps": ([], "list the envs"),
    "pause": (["ENV"], "pause an env"),
    "resume": (["ENV"], "resume an env"),
    "kill": (["ENV"], "kill an env"),
    "copy": (["ENV"], "clone an env (the copy starts paused)"),
    "vmmap": (["ENV"], "an env's mapped memory"),
    "save": (["ENV", "NAME"], "save a paused env to an image"),
    "load": (["NAME"], "restore an image as a new paused env"),
    "ls": ([], "images and programs on the node"),
    "info": ([], "the node"),
    "stats": ([], "the node's statistics"),
    "spawn": (["PROGRAM", "ARGS..."], "start a program"),
    "console": (["[on|off]"], "the node's recent console; on: show it between the prompts "
                "as it comes (with trace on, the node's trace lines too), off: stop"),
    "migrate_send_normal": (["ENV", "REMOTE_IP", "REMOTE_PORT", "LOCAL_IP"],
                            "copy every page to the destination (the source copy stays, paused)"),
    "migrate_recv_normal": ([], "wait for a migration to arrive here"),
    "migrate_send_pgfault": (["ENV", "REMOTE_IP", "REMOTE_PORT", "LOCAL_IP", "LOCAL_PORT"],
                             "send the page table; the destination fetches pages on faults"),
    "migrate_recv_pgfault": ([], "wait for a demand-paging migration to arrive here"),
    "migrate_send_precopy": (["ENV", "REMOTE_IP", "REMOTE_PORT"],
                             "copy while it runs, then stop it for the last pages"),
    "node": (["[HOST:P]"], "show or change the node this shell drives"),
    "trace": (["on|off"], "the original's per-step lines for migrations"),
    "help": (["[COMMAND]"], "this text, or one command's"),
    "exit": ([], "leave the shell"),
    "quit": ([], "leave the shell"),
}
# jmigctl's commands the shell passes on as they are (jmigctl checks them).
PASSTHROUGH = ("migrate", "jobs", "cancel", "recover", "image", "top", "run", "nodes", "drain",
               "cordon", "uncordon", "balance", "pin", "unpin")


def usage_of(cmd: str) -> str:
    params = SPECS[cmd][0]
    return " ".join([cmd, *(p if not p.endswith("...") else f"[{p}]" for p in params)])


def check_args(cmd: str, words: list[str]) -> list[str]:
    """The positional words of a command line (options, -x, are left to
    jmigctl); UsageError naming what is missing or extra."""
    params = SPECS[cmd][0]
    need = [p for p in params if not p.startswith("[") and not p.endswith("...")]
    if params and params[-1].endswith("..."):           # the rest is the program's
        if len(words) < len(need):
            raise UsageError(f"{cmd}: missing {' '.join(need[len(words):])} "
                             f"(usage: {usage_of(cmd)})")
        return words
    pos = [w for w in words if not w.startswith("-") or _is_number(w)]
    if len(pos) < len(need):
        missing = " ".join(need[len(pos):])
        raise UsageError(f"{cmd}: missing {missing} (usage: {usage_of(cmd)})")
    if len(pos) > len(params):
        extra = " ".join(pos[len(params):])
        raise UsageError(f"{cmd}: unexpected {extra!r} (usage: {usage_of(cmd)})")
    return words


def _is_number(w: str) -> bool:
    return w[1:].isdigit()


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{what} {text!r} is not a port number")
    return int(text)


class Shell:
    def __init__(self, ctx, run_line):
        """run_line: jmigctl's main (argv, environ=, stdout=, stderr=, prog=)
        -> exit code, which runs each command typed that the shell does
        not handle itself."""
        self.ctx = ctx
        self.run_line = run_line
        self.node = ctx.node
        self.trace = bool(getattr(ctx.args, "trace", False))
        self.interactive = False
        self.follower: threading.Thread | None = None
        self._follow_stop = None            # (trio token, cancel scope) of the follower
        self._lock = threading.Lock()
        self._envs: tuple[float, list[str]] = (0.0, [])
        self.known_nodes: list[str] = [self.node]
        for n in (ctx.environ.get("JMIG_NODES") or "").split(","):
            if n and n not in self.known_nodes:
                self.known_nodes.append(n)

    def prompt(self) -> str:
        return f"jmig {self.node}> "

    # -- the loop -------------------------------------------------------------------------
    def loop(self, lines=None) -> int:
        self.interactive = lines is None and sys.stdin.isatty()
        src = lines if lines is not None else sys.stdin
        if self.interactive:
            self._setup_readline()
            self.ctx.say(f"jmig shell on {self.node}; type help for the commands.")
        try:
            while True:
                if self.interactive:
                    try:
                        line = input(self.prompt())
                    except EOFError:
                        self.ctx.say("")
                        return 0
                    except KeyboardInterrupt:        # Ctrl-C cancels the line, not the shell
                        self.ctx.say("^C")
                        continue
                else:
                    line = src.readline() if hasattr(src, "readline") else next(src, "")
                    if not line:
                        return 0
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.split()[0] in ("exit", "quit"):
                    if self.interactive and readline is not None:     # not worth recalling
                        n = readline.get_current_history_length()
                        if n:
                            readline.remove_history_item(n - 1)
                    return 0
                try:
                    self.execute(line)
                except KeyboardInterrupt:
                    self.ctx.say("^C")
        finally:
            self._console_off()
            self._save_history()

    def say_error(self, text: str) -> None:
        self.ctx.say(f"error: {text}")

    def execute(self, line: str) -> int:
        """Run one command line; returns jmigctl's exit code for it."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.say_error(str(exc))
            return EXIT_USAGE
        if not words:
            return EXIT_OK
        cmd, rest = words[0], words[1:]
        try:
            return self._dispatch(cmd, rest)
        except CtlError as exc:
            return report("--json" in rest, exc, self.ctx.out, self.ctx.out, prog="")

    def _dispatch(self, cmd: str, rest: list[str]) -> int:
        if cmd in PASSTHROUGH:
            return self.jmigctl([cmd, *rest])
        if cmd not in SPECS:
            hint = ""
            if cmd.startswith("migrate"):
                hint = " (migrate_send_normal, migrate_send_pgfault, migrate_send_precopy, " \
                       "migrate_recv_normal, migrate_recv_pgfault)"
            raise UsageError(f"unknown command {cmd!r}{hint}; type help")
        check_args(cmd, rest)
        if cmd == "help":
            return self._help(rest)
        if cmd == "node":
            return self._node(rest)
        if cmd == "trace":
            return self._trace(rest)
        if cmd in ("migrate_recv_normal", "migrate_recv_pgfault"):
            return self._recv(cmd)
        if cmd == "migrate_send_normal":
            env, rip, rport, lip = rest
            self._check_local(lip, None)
            return self.jmigctl(["migrate", env, "--to", f"{rip}:{_port(rport, 'REMOTE_PORT')}",
                                 "--method", "normal", "--keep", *self._trace_flag()])
        if cmd == "migrate_send_pgfault":
            env, rip, rport, lip, lport = rest
            base = self._pgfault_base(rip, _port(rport, "REMOTE_PORT"))
            self._check_local(lip, _port(lport, "LOCAL_PORT"))
            return self.jmigctl(["migrate", env, "--to", f"{rip}:{base}", "--method", "pgfault",
                                 "--no-push", "--page-server", lip, *self._trace_flag()])
        if cmd == "migrate_send_precopy":
            env, rip, rport = rest
            return self.jmigctl(["migrate", env, "--to", f"{rip}:{_port(rport, 'REMOTE_PORT')}",
                                 "--method", "precopy", *self._trace_flag()])
        if cmd == "console" and rest in (["on"], ["off"]):
            return self._console_on() if rest == ["on"] else self._console_off(say=True)
        if cmd in ("save", "load"):
            return self.jmigctl([cmd, *rest, *self._trace_flag()])
        return self.jmigctl([cmd, *rest])

    def _traced_by_console(self) -> bool:
        """The console follower shows this node's trace lines already."""
        return self.trace and self.follower is not None

    def _trace_flag(self) -> list[str]:
        return ["--trace"] if self.trace and not self._traced_by_console() else []

    def jmigctl(self, argv: list[str]) -> int:
        ctx = self.ctx
        secret = ["--secret-file", ctx.args.secret_file] if ctx.args.secret_file else []
        return self.run_line(["--node", self.node, *secret, *argv], environ=ctx.environ,
                            stdout=ctx.out, stderr=ctx.out, prog="")

    # -- the shell's own commands --------------------------------------------------------------
    def _help(self, rest: list[str]) -> int:
        if not rest:
            self.ctx.say(HELP)
            return EXIT_OK
        cmd = rest[0]
        if cmd in SPECS:
            self.ctx.say(f"usage: {usage_of(cmd)}\n  {SPECS[cmd][1]}")
            return EXIT_OK
        if cmd in PASSTHROUGH:
            return self.jmigctl([cmd, "-h"])
        raise UsageError(f"unknown command {cmd!r}; type help")

    def _node(self, rest: list[str]) -> int:
        if not rest:
            self.ctx.say(self.node)
            return EXIT_OK
        try:
            parse_node(rest[0])
        except ValueError:
            raise UsageError(bad_node(rest[0]) + " (usage: node HOST:P)") from None
        self._console_off()
        self.node = rest[0]
        if self.node not in self.known_nodes:
            self.known_nodes.append(self.node)
        self._envs = (0.0, [])
        self.ctx.say(f"now on {self.node}")
        return EXIT_OK

    def _trace(self, rest: list[str]) -> int:
        if rest not in (["on"], ["off"]):
            raise UsageError("trace takes on or off (usage: trace on|off)")
        self.trace = rest == ["on"]
        self.ctx.say(f"trace is {rest[0]}")
        if self.follower is not None:             # the console follows the trace too, or not
            self._console_off()
            self._console_on(quiet=True)
        return EXIT_OK

    def _call(self, op: str, args: dict | None = None, on_push=None, node: str | None = None):
        async def call():
            async with await ControlClient.open(node or self.node, self.ctx.secret(),
                                                timeout=5) as c:
                return await c.request(op, args, on_push)
        return trio.run(call)

    def _info(self, node: str | None = None) -> dict:
        try:
            return self._call("info", node=node)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise classify(exc, self.ctx, node or self.node) from None

    def _pgfault_base(self, host: str, port: int) -> int:
        """The destination's P from the REMOTE_PORT of migrate_send_pgfault:
        its pgfault port P+1 (the original's form) or P itself."""
        if port > 1:
            try:
                info = self._call("info", node=f"{host}:{port - 1}")
                if info["ports"].get("pgfault") == port:
                    return port - 1
            except Exception:
                pass
        return port

    def _check_local(self, local_ip: str, local_port: int | None) -> None:
        """LOCAL_IP must be this node's address (unless it is bound to every
        address), LOCAL_PORT its page-server port P+2 or its P."""
        info = self._info()
        host, ports = info.get("host", ""), info["ports"]
        if host not in ("", "0.0.0.0", "::") and local_ip not in (host, "localhost"):
            raise UsageError(f"LOCAL_IP {local_ip} is not the address of {self.node} ({host}); "
                             "the destination would not find this node there")
        if local_port is not None and local_port not in (ports["pager"], ports["normal"]):
            raise UsageError(f"LOCAL_PORT {local_port} is not {self.node}'s page-server port "
                             f"{ports['pager']} (or its port {ports['normal']})")

    def _recv(self, cmd: str) -> int:
        ctx = self.ctx
        info = self._info()
        port = info["ports"]["normal" if cmd == "migrate_recv_normal" else "pgfault"]
        ctx.say(f"Waiting for connections... (port {port})")

        def on_push(kind, data):
            if kind == "trace" and isinstance(data, dict):
                for text in data.get("lines") or []:
                    self.show(text)
        try:
            res = self._call("wait_arrival", {"trace": self.trace
                                              and not self._traced_by_console()},
                             on_push=on_push)
        except KeyboardInterrupt:
            ctx.say("stopped waiting")
            return EXIT_FAILED
        except BaseException as exc:
            raise classify(exc, self.ctx) from None
        ctx.say(f"Process Migration Finished, You can resume New Env: {res['envid']}")
        return EXIT_OK

    # -- the console, interleaved ---------------------------------------------------------------
    def show(self, text: str) -> None:
        """A line from elsewhere (the console, a trace), above the prompt."""
        with self._lock:
            out = self.ctx.out
            if self.interactive and readline is not None:
                out.write("\r\x1b[K" + text + "\n" + self.prompt() + readline.get_line_buffer())
            else:
                out.write(text + "\n")
            out.flush()

    def _console_on(self, quiet: bool = False) -> int:
        if self.follower is not None:
            self.ctx.say("console is on already")
            return EXIT_OK
        node = self.node
        ready = threading.Event()
        failure: list[BaseException] = []

        async def follow():
            pending = [""]

            def on_push(kind, data):
                if kind != "console" or not isinstance(data, dict):
                    return
                pending[0] += data.get("text", "")
                *lines, pending[0] = pending[0].split("\n")
                for text in lines:
                    self.show(f"[{node}] {text}")
            with trio.CancelScope() as scope:
                self._follow_stop = (trio.lowlevel.current_trio_token(), scope)
                try:
                    async with await ControlClient.open(node, self.ctx.secret(), timeout=5) as c:
                        ready.set()
                        await c.request("console", {"follow": True, "lines": 0,
                                                    "trace": self.trace}, on_push)
                except Exception as exc:
                    if not ready.is_set():
                        failure.append(exc)
                        ready.set()
                        return
                    self.show(f"[{node}] (console closed: {exc or type(exc).__name__})")
                    return
            if not scope.cancelled_caught:
                self.show(f"[{node}] (console closed: the node stopped?)")

        def thread():
            try:
                trio.run(follow)
            except BaseException:
                pass
            finally:
                self.follower = None
        self.follower = threading.Thread(target=thread, name="console", daemon=True)
        self.follower.start()
        ready.wait(10)
        if failure:
            self.follower = None
            raise classify(failure[0], self.ctx, node)
        if not quiet:
            self.ctx.say(f"console of {node} is on (console off to stop)")
        return EXIT_OK

    def _console_off(self, say: bool = False) -> int:
        t, stop = self.follower, self._follow_stop
        if t is not None and stop is not None:
            token, scope = stop
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except (RuntimeError, trio.RunFinishedError):
                pass
            t.join(5)
        self.follower = None
        self._follow_stop = None
        if say:
            self.ctx.say("console is off")
        return EXIT_OK

    # -- readline: editing, history, completion ------------------------------------------------
    def history_path(self) -> Path:
        env = self.ctx.environ
        if env.get("JMIG_HISTORY"):
            return Path(env["JMIG_HISTORY"])
        base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME", "/tmp"), ".local",
                                                          "state")
        return Path(base) / "jmig" / "shell_history"

    def _setup_readline(self) -> None:
        if readline is None:
            return
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(self.history_path())
        except OSError:
            pass

    def _save_history(self) -> None:
        if readline is None or not self.interactive:
            return
        path = self.history_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    def env_ids(self) -> list[str]:
        t, ids = self._envs
        if time.monotonic() - t > 2.0:
            try:
                ids = [str(e["envid"]) for e in self._call("ps")["envs"]]
            except Exception:
                ids = []
            self._envs = (time.monotonic(), ids)
        return ids

    def candidates(self, before: str, text: str) -> list[str]:
        """Completions of `text`, the word being typed after `before`."""
        words = before.split()
        if not words:
            pool = [*SPECS, *PASSTHROUGH, "console"]
        else:
            cmd, pos = words[0], len(words) - 1
            params = SPECS.get(cmd, ([], ""))[0]
            param = params[pos] if pos < len(params) else ""
            if cmd in ("trace", "console") and pos == 0:
                pool = ["on", "off"]
            elif cmd == "help" and pos == 0:
                pool = [*SPECS, *PASSTHROUGH]
            elif cmd == "node" and pos == 0:
                pool = list(self.known_nodes)
            elif param == "ENV" or (cmd in PASSTHROUGH and cmd in ("migrate", "recover")
                                    and pos == 0):
                pool = self.env_ids()
            elif param in ("REMOTE_IP", "LOCAL_IP"):
                pool = sorted({n.rpartition(":")[0] for n in self.known_nodes})
            elif param in ("REMOTE_PORT", "LOCAL_PORT"):
                pool = sorted({n.rpartition(":")[2] for n in self.known_nodes})
            elif cmd == "migrate" and words[-1] == "--to":
                pool = list(self.known_nodes)
            else:
                pool = []
        return sorted({p + " " for p in pool if p.startswith(text)})

    def complete(self, text: str, state: int):
        if state == 0:
            line = readline.get_line_buffer()
            self._matches = self.candidates(line[:readline.get_begidx()], text)
        return self._matches[state] if state < len(self._matches) else None
