"""jmigctl: drive jmig nodes.

    jmigctl [--node HOST:P] [--secret-file F] COMMAND ...

The node is --node or $JMIG_NODE (default 127.0.0.1:50001); the secret is
--secret-file, $JMIG_SECRET_FILE, or ~/.config/jmig/secret (which a local
node creates), so a local cluster needs no set-up.

Exit codes: 0 ok; 1 the node refused or the operation failed; 2 bad
command line; 3 the node cannot be reached; 4 authentication failed (wrong
secret, or a secret file others can read); 5 protocol error (incompatible
or garbled peer); 6 the node is busy (too many unauthenticated
connections: try again).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from pathlib import Path

import trio
from rich.console import Console

import jmig
from ..node.secret import SecretError, read_secret, resolve_path
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.wire import ConnectionClosed
from . import render
from .client import DEFAULT_NODE, ControlClient, RemoteError, parse_node

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_PROTOCOL, EXIT_BUSY = range(7)
MAX_UPLOAD = 8 << 20


# What to do about a refusal, where the node's message does not say.
REFUSAL_HINTS = {
    "no-such-env": "`jmigctl ps` lists the node's envs",
    "no-such-image": "`jmigctl ls` lists the node's images",
    "bad-elf": "spawn takes a 32-bit JOS ELF executable (see examples/user)",
}


class UsageError(Exception):
    pass


def parse_env(text: str) -> int:
    """An env id as people write it: decimal (4100) or hex (0x1004)."""
    try:
        v = int(text, 0) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad env id {text!r}: use e.g. 4100 or 0x1004") from None
    if not 0 < v < 1 << 31:
        raise argparse.ArgumentTypeError(f"env id {text} out of range")
    return v


class Ctx:
    """What every command gets: where to connect, how to print."""

    def __init__(self, args, environ, out, err):
        self.args = args
        self.environ = environ
        self.out = out
        self.err = err
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.errconsole = Console(file=err, highlight=False, soft_wrap=True)
        self.json = getattr(args, "json", False)
        self.job_id: str | None = None      # the job a command started, once the node names it

    @property
    def node(self) -> str:
        return self.args.node or self.environ.get("JMIG_NODE") or DEFAULT_NODE

    def secret(self) -> bytes:
        path, _ = resolve_path(self.args.secret_file, self.environ)
        try:
            return read_secret(path)
        except SecretError as exc:
            if path.exists():
                raise
            raise SecretError(f"{exc} (start a node first, or pass --secret-file)") from None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def emit(self, data) -> None:
        print(json.dumps(data, indent=2, sort_keys=True), file=self.out, flush=True)

    async def call(self, op: str, args: dict | None = None, on_push=None, node: str | None = None):
        async with await ControlClient.open(node or self.node, self.secret()) as c:
            return await c.request(op, args, on_push)

    async def job(self, op: str, args: dict, label: str):
        """Start a job (migrate, save, load) and watch it with a progress bar;
        its result.  The job's id is kept, so that an interrupted watch can
        say how to pick it up again."""
        def on_push(kind, data):
            if kind == "job" and isinstance(data, dict):
                self.job_id = data.get("id")
            bar.update(kind, data)
        with render.ProgressBar(self.errconsole, label) as bar:
            return await self.call(op, args, on_push=on_push)


# -- commands ------------------------------------------------------------------------

async def cmd_ps(ctx: Ctx):
    res = await ctx.call("ps")
    envs = res["envs"]
    if ctx.json:
        return ctx.emit(envs)
    if ctx.args.quiet:
        for e in envs:
            ctx.say(str(e["envid"]))
        return
    render.table(ctx.console, ["ENV", "ID", "PARENT", "STATUS", "PROGRAM", "PAGES", "RUNS", "STATE"],
                 [[e["envid"], f"{e['envid']:08x}", e["parent"], e["status"], e["name"],
                   e["pages"] if not e["remote_pages"] else f"{e['pages']} ({e['remote_pages']} remote)",
                   e["runs"], e["state"]] for e in envs])


async def cmd_spawn(ctx: Ctx):
    a = ctx.args
    args = {"program": a.program, "args": a.args, "paused": a.paused}
    path = Path(a.program)
    if "/" in a.program or a.program.endswith(".elf"):
        try:
            if path.stat().st_size > MAX_UPLOAD:
                raise UsageError(f"{a.program} is larger than {MAX_UPLOAD} bytes")
            args["elf"] = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {a.program}: {exc.strerror}") from None
        args["program"] = (path.name[:-4] if path.name.endswith(".elf") else path.name)[:64] or "elf"
    res = await ctx.call("spawn", args)
    if ctx.json:
        return ctx.emit(res)
    ctx.say(f"New Env Created: {res['envid']}")


async def cmd_pause(ctx: Ctx):
    await ctx.call("pause", {"envid": ctx.args.env})
    ctx.say(f"Process {ctx.args.env} is paused.")


async def cmd_resume(ctx: Ctx):
    await ctx.call("resume", {"envid": ctx.args.env})
    ctx.say(f"Process {ctx.args.env} is resumed.")


async def cmd_kill(ctx: Ctx):
    await ctx.call("kill", {"envid": ctx.args.env})
    ctx.say(f"Process {ctx.args.env} is killed.")


async def cmd_copy(ctx: Ctx):
    if not ctx.json:
        ctx.say(f"Copying from Env: {ctx.args.env}")
    res = await ctx.call("copy", {"envid": ctx.args.env})
    if ctx.json:
        return ctx.emit(res)
    ctx.say(f"New Env Created: {res['new_envid']}")


async def cmd_ls(ctx: Ctx):
    res = await ctx.call("ls")
    if ctx.json:
        return ctx.emit(res)
    rows = [[i["name"], "image", render.size(i["size"])] for i in res["images"]]
    rows += [[p["name"], "program", render.size(p["size"])] for p in res["programs"]]
    rows += [[n, "program (bundled)", ""] for n in res["bundled"]]
    render.table(ctx.console, ["NAME", "KIND", "SIZE"], rows)


async def cmd_info(ctx: Ctx):
    res = await ctx.call("info")
    if ctx.json:
        return ctx.emit(res)
    m = res["memory"]
    ports = res["ports"]
    ctx.say(f"node      {res['name']} (jmig {res['version']})\n"
            f"ports     normal {ports.get('normal')}, pgfault {ports.get('pgfault')}, "
            f"pager {ports.get('pager')}, control {ports.get('control')}\n"
            f"memory    {render.size(m['used'])} used, {render.size(m['free'])} free of "
            f"{render.size(m['total'])}\n"
            f"envs      {res['envs']}\n"
            f"cpus      {res['cpus']} (slice {res['slice']} instructions)\n"
            f"uptime    {render.duration(res['uptime'])}\n"
            f"executed  {res['instructions']} instructions\n"
            f"data dir  {res['data_dir']}")


async def cmd_vmmap(ctx: Ctx):
    res = await ctx.call("vmmap", {"envid": ctx.args.env})
    if ctx.json:
        return ctx.emit(res)
    render.table(ctx.console, ["START", "END", "PAGES", "PERM", "STATE"],
                 [[f"{r['start']:08x}", f"{r['end']:08x}", r["pages"], render.perm(r["perm"]),
                   r["state"]] for r in res["ranges"]])


async def cmd_console(ctx: Ctx):
    a = ctx.args

    def show(kind, data):
        if kind == "console":
            ctx.out.write(data.get("text", ""))
            ctx.out.flush()
    res = await ctx.call("console", {"follow": a.follow, "lines": a.lines}, on_push=show)
    if not a.follow:
        ctx.out.write(res["text"])
        ctx.out.flush()


async def cmd_stats(ctx: Ctx):
    res = await ctx.call("stats")
    if ctx.json:
        return ctx.emit(res)
    info = res["info"]
    ctx.say(f"{info['name']}: {info['envs']} envs, {info['instructions']} instructions, "
            f"{info['connections']} connections, {info['refused']} refused")
    pager = dict(res.get("pager", {}))
    migrations = pager.pop("migrations_in", [])
    for k, v in sorted(pager.items()):
        if isinstance(v, float):
            v = f"{v:.3f}"
        ctx.say(f"  {k:24} {v}")
    if migrations:
        render.table(ctx.console, ["ENV", "FROM", "STATE", "FAULTS", "FETCHED", "PUSHED",
                                   "RELEASED AFTER"],
                     [[m["envid"], m["origin"], m["state"], m["faults"], m["fetched"],
                       m["pushed"], render.duration(m["release_s"])] for m in migrations],
                     title="demand-paging migrations received")


async def cmd_save(ctx: Ctx):
    a = ctx.args
    args = {"envid": a.env, "name": a.name, "force": a.force, "pause": a.pause}
    if a.detach:
        return show_detached(ctx, await ctx.call("save", {**args, "detach": True}))
    res = await ctx.job("save", args, f"save {a.env}")
    if ctx.json:
        return ctx.emit(res)
    ctx.say(f"Save Image Successful: {a.name} ({res['pages']} pages, "
            f"{render.size(res['bytes'])}, {res['mib_per_s']:.1f} MiB/s)")


async def cmd_load(ctx: Ctx):
    a = ctx.args
    args = {"name": a.name, "resume": a.resume}
    if a.detach:
        return show_detached(ctx, await ctx.call("load", {**args, "detach": True}))
    res = await ctx.job("load", args, f"load {a.name}")
    if ctx.json:
        return ctx.emit(res)
    if a.resume:
        ctx.say(f"Load Image Successful, New Env {res['envid']} is running.")
    else:
        ctx.say(f"Load Image Successful, You can resume New Env: {res['envid']}")


def _migrate_args(a) -> dict:
    args = {"envid": a.env, "to": a.to, "method": a.method, "keep": a.keep, "resume": a.resume}
    if a.timeout is not None:
        args["timeout"] = a.timeout
    if a.method == "pgfault" or a.then == "pgfault":
        args["push"] = a.push
        args["prefetch"] = a.prefetch
    if a.method == "precopy":
        args.update({"max_rounds": a.max_rounds, "downtime_limit_ms": a.downtime_limit,
                     "then": a.then or "stop"})
    return args


async def cmd_migrate(ctx: Ctx):
    a = ctx.args
    try:
        parse_node(a.to)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if a.detach:
        return show_detached(ctx, await ctx.call("migrate", {**_migrate_args(a), "detach": True}))
    res = await ctx.job("migrate", _migrate_args(a), f"migrate {a.env}")
    if ctx.json:
        return ctx.emit(res)
    show_migration(ctx, res, a.to)


def show_detached(ctx: Ctx, job: dict) -> None:
    if ctx.json:
        return ctx.emit(job)
    what = f"{job['kind']} of env {job['envid']}" if job.get("envid") else job["kind"]
    ctx.say(f"Job {job['id']} started: {what} ({job['target']}); "
            f"`jmigctl jobs watch {job['id']}` follows it")


async def cmd_jobs(ctx: Ctx):
    a = ctx.args
    if a.action == "watch":
        if not a.id:
            raise UsageError("jobs watch needs a job id (`jmigctl jobs` lists them)")
        ctx.job_id = a.id
        def on_push(kind, data):
            bar.update(kind, data)
        with render.ProgressBar(ctx.errconsole, f"job {a.id}") as bar:
            res = await ctx.call("watch", {"job": a.id}, on_push=on_push)
        if ctx.json:
            return ctx.emit(res)
        ctx.say(f"Job {a.id} finished: " + ", ".join(
            f"{k} {v}" for k, v in res.items() if k in ("envid", "new_envid", "image", "to")))
        return
    if a.action is not None:
        raise UsageError(f"unknown jobs action {a.action!r}: use `jobs` or `jobs watch ID`")
    jobs = (await ctx.call("jobs"))["jobs"]
    if ctx.json:
        return ctx.emit(jobs)
    render.table(ctx.console, ["JOB", "KIND", "ENV", "TARGET", "METHOD", "STATE", "PROGRESS"],
                 [[j["id"], j["kind"], j["envid"] or "-", j["target"], j["method"] or "-",
                   j["state"] if not j.get("error") else f"{j['state']}: {j['error']['message']}",
                   _progress_text(j)] for j in jobs])


def _progress_text(j: dict) -> str:
    p = j.get("progress") or {}
    parts = [p["stage"]] if p.get("stage") else []
    if p.get("total"):
        parts.append(f"{p.get('done', 0)}/{p['total']} pages")
    if p.get("round"):
        parts.append(f"round {p['round']}")
    return ", ".join(parts) or "-"


async def cmd_cancel(ctx: Ctx):
    res = await ctx.call("cancel", {"job": ctx.args.id})
    if ctx.json:
        return ctx.emit(res)
    if res["state"] == "cancelled":
        ctx.say(f"Job {res['id']} cancelled: {res['error']['message']}")
    else:
        ctx.say(f"Job {res['id']} is {res['state']}")


def show_migration(ctx: Ctx, res: dict, to: str) -> None:
    if res.get("resumed"):
        ctx.say(f"Process Migration Finished, New Env {res['new_envid']} is running on {to}.")
    else:
        ctx.say(f"Process Migration Finished, You can resume New Env: {res['new_envid']}")
    parts = [f"method {res['method']}", f"{res['pages']} pages", render.size(res["bytes"]),
             f"total {render.duration(res['total_s'])}"]
    if res.get("downtime_s") is not None:
        parts.append(f"downtime {render.duration(res['downtime_s'])}")
    if res.get("mib_per_s"):
        parts.append(f"{res['mib_per_s']:.1f} MiB/s")
    if res.get("rounds") is not None:
        parts.append(f"{res['rounds']} rounds")
    ctx.say("  " + ", ".join(parts))


async def cmd_recover(ctx: Ctx):
    res = await ctx.call("recover", {"envid": ctx.args.env, "force": ctx.args.force})
    if ctx.json:
        return ctx.emit(res)
    found = f"{res['found']}; " if res.get("found") else ""
    ctx.say(f"Env {ctx.args.env}: {found}{res['outcome']}")


def cmd_image(ctx: Ctx):
    from .image import inspect, verify
    if ctx.args.image_cmd == "inspect":
        return inspect(ctx)
    return verify(ctx)


def cmd_run(ctx: Ctx):
    from .run import run
    return run(ctx)


def cmd_shell(ctx: Ctx):
    from .shell import Shell
    return Shell(ctx).loop()


def cmd_demo(ctx: Ctx):
    from .demo import demo
    return demo(ctx)


# -- the parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jmigctl", description="Drive jmig nodes: processes, "
                                "images and migration.", epilog="Exit codes: 0 ok, 1 refused "
                                "or failed, 2 usage, 3 unreachable, 4 authentication, 5 protocol, "
                                "6 node busy.")
    p.add_argument("--node", help=f"node HOST:P (default $JMIG_NODE or {DEFAULT_NODE})")
    p.add_argument("--secret-file", help="cluster secret (default $JMIG_SECRET_FILE or "
                   "~/.config/jmig/secret)")
    p.add_argument("--version", action="version", version=f"jmigctl {jmig.__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name, fn, help, json_flag=True):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    sp = add("ps", cmd_ps, "list envs")
    sp.add_argument("-q", "--quiet", action="store_true", help="print env ids only")
    sp = add("spawn", cmd_spawn, "start a program (bundled, on the node's disk, or a local "
             "ELF); options go before PROGRAM, everything after it is the program's")
    sp.add_argument("program")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.add_argument("--paused", action="store_true", help="create it paused")
    for name, fn, h in (("pause", cmd_pause, "pause an env"), ("resume", cmd_resume, "resume an env"),
                        ("kill", cmd_kill, "kill an env")):
        sp = add(name, fn, h, json_flag=False)
        sp.add_argument("env", type=parse_env)
    sp = add("copy", cmd_copy, "clone an env (the copy starts paused)")
    sp.add_argument("env", type=parse_env)
    add("ls", cmd_ls, "programs and images on the node's disk")
    add("info", cmd_info, "the node: name, ports, memory, envs, uptime")
    sp = add("vmmap", cmd_vmmap, "an env's mapped memory")
    sp.add_argument("env", type=parse_env)
    sp = add("console", cmd_console, "show the node's console", json_flag=False)
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    sp.add_argument("--lines", type=int, default=200, help="recent chunks to show first")
    add("stats", cmd_stats, "node and pager statistics")
    sp = add("save", cmd_save, "save a paused env to an image on the node's disk")
    sp.add_argument("env", type=parse_env)
    sp.add_argument("name")
    sp.add_argument("--force", action="store_true", help="replace an existing image")
    sp.add_argument("--pause", action="store_true", help="pause a running env for the save")
    sp.add_argument("--detach", action="store_true", help="start the job and return at once")
    sp = add("load", cmd_load, "restore an image as a new paused env")
    sp.add_argument("name")
    sp.add_argument("--resume", action="store_true", help="resume it at once")
    sp.add_argument("--detach", action="store_true", help="start the job and return at once")
    sp = add("migrate", cmd_migrate, "move an env to another node (a job of this node: "
             "Ctrl-C stops watching it, not the job)")
    sp.add_argument("env", type=parse_env)
    sp.add_argument("--to", required=True, metavar="HOST:P", help="destination node")
    sp.add_argument("--method", choices=("normal", "pgfault", "precopy"), default="normal")
    sp.add_argument("--keep", action="store_true", help="keep the source copy, paused")
    sp.add_argument("--resume", action="store_true", help="resume it on the destination")
    sp.add_argument("--push", action=argparse.BooleanOptionalAction, default=True,
                    help="pgfault: push the remaining pages in the background (default on)")
    sp.add_argument("--prefetch", type=int, default=0, metavar="N",
                    help="pgfault: also send the next N pages with each fault")
    sp.add_argument("--max-rounds", type=int, default=8, help="precopy: most copy rounds")
    sp.add_argument("--downtime-limit", type=int, default=50, metavar="MS",
                    help="precopy: stop when the rest can be sent within MS")
    sp.add_argument("--then", choices=("pgfault",), help="precopy: finish by demand paging")
    sp.add_argument("--detach", action="store_true", help="start the job and return at once")
    sp.add_argument("--timeout", type=float, metavar="S",
                    help="give up (and roll back) after S seconds without progress (default 10)")
    sp = add("jobs", cmd_jobs, "migrate, save and load jobs: in flight and the last finished")
    sp.add_argument("action", nargs="?", choices=("watch",), help="watch: follow one job")
    sp.add_argument("id", nargs="?", help="the job to watch")
    sp = add("cancel", cmd_cancel, "stop a job before its commit; the env stays as it was")
    sp.add_argument("id", help="the job (`jmigctl jobs` lists them)")
    sp = add("recover", cmd_recover, "settle an env left by a failed migration")
    sp.add_argument("env", type=parse_env)
    sp.add_argument("--force", action="store_true",
                    help="the destination is gone for good: release the env here")
    sp = sub.add_parser("image", help="inspect or verify an image file (offline)")
    isub = sp.add_subparsers(dest="image_cmd", metavar="ACTION")
    isub.required = True
    ip = isub.add_parser("inspect", help="header, page map and checksum of an image")
    ip.add_argument("file")
    ip.add_argument("--json", action="store_true")
    ip.set_defaults(fn=cmd_image)
    ip = isub.add_parser("verify", help="check an image completely")
    ip.add_argument("file")
    ip.set_defaults(fn=cmd_image)
    sp = add("run", cmd_run, "run a program on an in-process kernel and print its console",
             json_flag=False)
    sp.add_argument("program", help="a bundled program name or a path to a JOS ELF")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.add_argument("--cpus", type=int, default=1)
    sp.add_argument("--max-instructions", type=int, default=100_000_000)
    sp.add_argument("--memory", default="64M")
    add("shell", cmd_shell, "an interactive prompt with the original project's commands",
        json_flag=False)
    sp = add("demo", cmd_demo, "start two local nodes and play the original walkthrough",
             json_flag=False)
    sp.add_argument("--fast", action="store_true", help="no pauses between steps")
    sp.add_argument("--base-port", type=int, default=0,
                    help="first node's P (default: find free ports near 50001)")
    return p


def main(argv: list[str] | None = None, environ=None, stdout=None, stderr=None) -> int:
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        # argparse prints usage errors, --help and --version to sys.stderr /
        # sys.stdout: send them to the streams this call was given.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if not getattr(args, "fn", None):
        parser.print_help(err)
        return EXIT_USAGE
    ctx = Ctx(args, environ, out, err)

    def fail(code: int, msg: str) -> int:
        print(f"jmigctl: {msg}", file=err, flush=True)
        return code

    try:
        if inspect.iscoroutinefunction(args.fn):
            result = trio.run(args.fn, ctx)
        else:
            result = args.fn(ctx)
        return result if isinstance(result, int) else EXIT_OK
    except UsageError as exc:
        return fail(EXIT_USAGE, str(exc))
    except SecretError as exc:
        return fail(EXIT_AUTH, str(exc))
    except RemoteError as exc:
        hint = REFUSAL_HINTS.get(exc.code)
        return fail(EXIT_FAILED, f"{exc.message} [{exc.code}]" + (f"; {hint}" if hint else ""))
    except AuthError as exc:
        if exc.code == "busy":
            return fail(EXIT_BUSY, f"{ctx.node}: {exc.message}")
        if exc.code == "auth":
            return fail(EXIT_AUTH, f"{ctx.node}: {exc.message}")
        return fail(EXIT_PROTOCOL, f"{ctx.node}: {exc.message}")
    except (OSError, trio.TooSlowError) as exc:
        return fail(EXIT_UNREACHABLE, f"cannot reach node {ctx.node}: "
                    f"{getattr(exc, 'strerror', None) or exc or 'timed out'} "
                    "(is jmig-node running there? see --node / JMIG_NODE)")
    except ConnectionClosed as exc:
        return fail(EXIT_PROTOCOL, f"{ctx.node} closed the connection: {exc}")
    except ProtocolError as exc:
        return fail(EXIT_PROTOCOL, f"{ctx.node}: protocol error: {exc}")
    except KeyboardInterrupt:
        if ctx.job_id:
            print(f"jmigctl: detached: the job goes on; `jmigctl jobs watch {ctx.job_id}` "
                  "follows it", file=err, flush=True)
            return EXIT_OK
        return fail(EXIT_FAILED, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
