"""jmigctl: drive jmig nodes.

    jmigctl [--node HOST:P] [--secret-file F] COMMAND ...

The node is --node or $JMIG_NODE (default 127.0.0.1:50001); `ps` and `top`
take several (--nodes A,B or $JMIG_NODES), or every member of the node's
cluster (--all).  The secret is --secret-file,
$JMIG_SECRET_FILE, or ~/.config/jmig/secret (which a local node creates),
so a local cluster needs no set-up.

Every command takes --json: its result as JSON on stdout, and a failure as
{"error": {"code": CODE, "message": TEXT}}.  Tables on a terminal are
rich's; piped, they are plain text, one row per line, columns in a fixed
order (-o wide adds some, -o json is --json).

Exit codes: 0 ok; 1 the node refused or the operation failed; 2 bad
command line; 3 a node cannot be reached (or went away); 4 authentication
failed (wrong secret, or a secret file others can read); 5 protocol error
(incompatible or garbled peer); 6 the node is busy (too many
unauthenticated connections: try again).  Output cut short because the
reader closed the pipe (`jmigctl ps | head -1`) is not a failure.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

import trio
from rich.console import Console

import jmig
from ..errors import leaf
from ..node.secret import SecretError, read_secret, resolve_path
from ..proto.migration import MAX_PREFETCH
from ..proto.wire import ConnectionClosed, parse_node
from . import render
from .client import DEFAULT_NODE, ControlClient
from .cluster import (cmd_balance, cmd_cordon, cmd_drain, cmd_nodes, cmd_pin, cmd_uncordon,
                      cmd_unpin, member_error, members)
from .exits import (EXIT_AUTH, EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_PROTOCOL, EXIT_TEXT,
                    EXIT_UNREACHABLE, EXIT_USAGE, CtlError, Unreachable, UsageError)
from .failures import bad_node, classify, report

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_UNREACHABLE",
           "EXIT_AUTH", "EXIT_PROTOCOL", "EXIT_BUSY", "UsageError", "CtlError"]

MAX_UPLOAD = 8 << 20


def parse_env(text: str) -> int:
    """An env id as people write it: decimal (4100) or hex (0x1004)."""
    try:
        v = int(text, 0) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad env id {text!r}: use e.g. 4100 or 0x1004") from None
    if not 0 < v < 1 << 31:
        raise argparse.ArgumentTypeError(f"env id {text} out of range")
    return v


def node_address(text: str) -> str:
    """A node as HOST:P, checked (argparse type)."""
    try:
        parse_node(text)
    except ValueError:
        raise argparse.ArgumentTypeError(bad_node(text)) from None
    return text


def int_range(lo: int, hi: int, what: str = "a number"):
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range ({lo}..{hi})")
        return v
    return parse


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0.1 .. 3600 seconds)")
    return v


class Ctx:
    """What every command gets: where to connect, how to print."""

    def __init__(self, args, environ, out, err, prog: str = "jmigctl"):
        self.args = args
        self.environ = environ
        self.out = out
        self.err = err
        self.prog = prog                    # "jmigctl", or "" inside the shell
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.errconsole = Console(file=err, highlight=False, soft_wrap=True)
        self.job_id: str | None = None      # the job a command started, once the node names it

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False) or getattr(self.args, "output", None) == "json")

    @property
    def wide(self) -> bool:
        return getattr(self.args, "output", None) == "wide"

    @property
    def node(self) -> str:
        if self.args.node:
            return self.args.node
        env = self.environ.get("JMIG_NODE")
        if env:
            try:
                parse_node(env)
            except ValueError:
                raise UsageError(f"$JMIG_NODE: {bad_node(env)}") from None
            return env
        return DEFAULT_NODE

    def nodes(self) -> list[str]:
        """The nodes of a cluster-wide command: --nodes, else --node, else
        $JMIG_NODES, else $JMIG_NODE (or the default)."""
        given = getattr(self.args, "nodes", None)
        source = "--nodes"
        if not given and not self.args.node and self.environ.get("JMIG_NODES"):
            given, source = self.environ["JMIG_NODES"], "$JMIG_NODES"
        if not given:
            return [self.node]
        out = []
        for n in given.replace(" ", ",").split(","):
            if not n:
                continue
            try:
                parse_node(n)
            except ValueError:
                raise UsageError(f"{source}: {bad_node(n)}") from None
            if n not in out:
                out.append(n)
        if not out:
            raise UsageError(f"{source} names no node: use e.g. 127.0.0.2:50001,127.0.0.3:50001")
        return out

    def cmd(self, text: str) -> str:
        """How to write a command in hints: `jmigctl ps`, or `ps` in the shell."""
        return f"`{self.prog} {text}`" if self.prog else f"`{text}`"

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

    def note(self, text: str) -> None:
        """A line for people that is not the command's output (stderr)."""
        print(text, file=self.err, flush=True)

    def emit(self, data) -> None:
        print(json.dumps(data, indent=2, sort_keys=True), file=self.out, flush=True)

    async def call(self, op: str, args: dict | None = None, on_push=None, node: str | None = None):
        async with await ControlClient.open(node or self.node, self.secret()) as c:
            return await c.request(op, args, on_push)

    def show_trace(self, lines) -> None:
        for line in lines:
            if self.json:
                self.note(line)
            else:
                self.say(line)

    async def job(self, op: str, args: dict, label: str, trace: bool = False):
        """Start a job (migrate, save, load) and watch it with a progress bar
        (or its trace lines); its result.  The job's id is kept, so that an
        interrupted watch can say how to pick it up again."""
        def on_push(kind, data):
            if kind == "job" and isinstance(data, dict):
                self.job_id = data.get("id")
            elif kind == "trace" and isinstance(data, dict):
                self.show_trace(data.get("lines") or [])
            bar.update(kind, data)
        with render.ProgressBar(None if trace else self.errconsole, label) as bar:
            return await self.call(op, {**args, "trace": True} if trace else args,
                                   on_push=on_push)


# -- processes -------------------------------------------------------------------------

def env_row(e: dict, node: str | None = None) -> dict:
    """One env as jmigctl shows it (JSON): the node's fields, with
    `program` (its program's name) and, cluster-wide, `node`."""
    row = dict(e)
    row["program"] = e.get("program") or e.get("name") or ""
    if node is not None:
        row["node"] = node
    return row


def env_cells(e: dict, wide: bool) -> list:
    pages = e["pages"] if not e.get("remote_pages") else f"{e['pages']} ({e['remote_pages']} remote)"
    cells = [e["envid"], f"{e['envid']:08x}", e["parent"], e["status"], e["program"] or "-",
             pages, e["runs"]]
    if wide:
        cells += [e.get("cpu", "-"), f"{e['eip']:08x}" if isinstance(e.get("eip"), int) else "-"]
    return cells + [e["state"] or "-"]


ENV_COLUMNS = ["ENV", "ID", "PARENT", "STATUS", "PROGRAM", "PAGES", "RUNS"]
WIDE_COLUMNS = ["CPU", "EIP"]


async def gather_ps(ctx: Ctx, nodes: list[str]) -> tuple[list[dict], list[tuple[str, CtlError]]]:
    """ps of every node at once: (rows with `node`, [(node, error)])."""
    results: dict[str, list] = {}
    errors: list[tuple[str, CtlError]] = []

    async def one(n):
        try:
            res = await ctx.call("ps", node=n)
            results[n] = [env_row(e, n) for e in res["envs"]]
        except Exception as exc:                    # reported per node, the others shown
            errors.append((n, classify(exc, ctx, n)))
    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n)
    return [r for n in nodes for r in results.get(n, [])], errors


async def cmd_ps(ctx: Ctx):
    if ctx.args.all:
        if ctx.args.nodes:
            raise UsageError("ps: --all lists every member; give it or --nodes, not both")
        nodes, others = await members(ctx)
    else:
        nodes, others = ctx.nodes(), []
    multi = len(nodes) > 1 or bool(ctx.args.nodes) or ctx.args.all
    rows, errors = await gather_ps(ctx, nodes)
    errors += [(v["addr"], member_error(v)) for v in others]
    if errors and not multi:
        raise errors[0][1]
    if not ctx.json:
        for n, err in errors:
            ctx.note(f"jmigctl: {n}: {err.message}")
    if ctx.json:         # the rows, and an {node, error} for each node that failed
        ctx.emit(rows + [{"node": n, "error": {"code": err.code, "message": err.message}}
                         for n, err in errors])
    elif ctx.args.quiet:
        for e in rows:
            ctx.say(f"{e['node']} {e['envid']}" if multi else str(e["envid"]))
    else:
        cols = (["NODE"] if multi else []) + ENV_COLUMNS + (WIDE_COLUMNS if ctx.wide else []) \
            + ["STATE"]
        render.table(ctx.console, cols, [([e["node"]] if multi else []) + env_cells(e, ctx.wide)
                                         for e in rows])
    if errors:
        return max(err.exit for _, err in errors)


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
        return ctx.emit({"new_envid": res["envid"], "program": res.get("program", args["program"])})
    ctx.say(f"New Env Created: {res['envid']}")


async def _simple(ctx: Ctx, op: str, word: str):
    res = await ctx.call(op, {"envid": ctx.args.env})
    if ctx.json:
        return ctx.emit({"envid": ctx.args.env, **(res or {})})
    ctx.say(f"Process {ctx.args.env} is {word}.")


async def cmd_pause(ctx: Ctx):
    await _simple(ctx, "pause", "paused")


async def cmd_resume(ctx: Ctx):
    await _simple(ctx, "resume", "resumed")


async def cmd_kill(ctx: Ctx):
    await _simple(ctx, "kill", "killed")


async def cmd_copy(ctx: Ctx):
    if not ctx.json:
        ctx.say(f"Copying from Env: {ctx.args.env}")
    res = await ctx.call("copy", {"envid": ctx.args.env})
    if ctx.json:
        return ctx.emit({"envid": res["envid"], "new_envid": res["new_envid"]})
    ctx.say(f"New Env Created: {res['new_envid']}")


async def cmd_ls(ctx: Ctx):
    res = await ctx.call("ls")
    items = [{"name": i["name"], "kind": "image", "size": i["size"]} for i in res["images"]]
    items += [{"name": p["name"], "kind": "program", "size": p["size"]} for p in res["programs"]]
    items += [{"name": n, "kind": "bundled", "size": None} for n in res["bundled"]]
    if ctx.json:
        return ctx.emit(res)
    kinds = {"image": "image", "program": "program (uploaded)", "bundled": "program (bundled)"}
    render.table(ctx.console, ["NAME", "KIND", "SIZE"],
                 [[i["name"], kinds[i["kind"]], render.size(i["size"]) if i["size"] is not None
                   else "-"] for i in items])


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
            f"deadlines {_deadlines(res['deadlines'])}\n"
            f"data dir  {res['data_dir']}")


def _deadlines(d: dict) -> str:
    k = d["keepalive"]
    return (f"progress {d['progress_s']:g} s, prepared {d['prepared_s']:g} s, "
            f"commit {d['commit_s']:g} s, status {d['status_s']:g} s, "
            f"hand-over {d['handover_s']:g} s, ipc {d['ipc_s']:g} s; keepalive "
            f"{k['idle_s']} s idle, {k['probes']} probes {k['interval_s']} s apart")


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
        if kind != "console" or not isinstance(data, dict):
            return
        if ctx.json:      # one JSON object per line while following
            print(json.dumps({"envid": data.get("envid", 0), "text": data.get("text", "")}),
                  file=ctx.out, flush=True)
        else:
            ctx.out.write(data.get("text", ""))
            ctx.out.flush()
    try:
        res = await ctx.call("console", {"follow": a.follow, "lines": a.lines}, on_push=show)
    except ConnectionClosed:
        if a.follow:
            raise Unreachable(f"{ctx.node} closed the connection (the node stopped?); "
                              "no more console output") from None
        raise
    if not a.follow:
        if ctx.json:
            return ctx.emit({"text": res["text"]})
        ctx.out.write(res["text"])
        ctx.out.flush()


def _stat_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


async def cmd_stats(ctx: Ctx):
    res = await ctx.call("stats")
    if ctx.json:
        return ctx.emit(res)
    info = res["info"]
    ctx.say(f"{info['name']}: {render.plural(info['envs'], 'env')}, "
            f"{info['instructions']} instructions, "
            f"{render.plural(info['connections'], 'connection')}, {info['refused']} refused")
    pager = dict(res.get("pager", {}))
    migrations = pager.pop("migrations_in", [])
    for k, v in sorted(pager.items()):
        ctx.say(f"  {k:24} {_stat_value(v)}")
    ipc = dict(res.get("ipc", {}))             # syscalls on envs of other nodes
    latency = ipc.pop("latency_ms", None)
    for k, v in sorted(ipc.items()):
        ctx.say(f"  {k:24} {_stat_value(v)}")
    if latency:
        ctx.say(f"  {'ipc_latency_ms':24} p50 {latency['p50']}, p99 {latency['p99']} "
                f"(last {latency['n']})")
    if migrations:
        render.table(ctx.console, ["ENV", "FROM", "STATE", "FAULTS", "FETCHED", "PUSHED",
                                   "RELEASED AFTER"],
                     [[m["envid"], m["origin"], m["state"], m["faults"], m["fetched"],
                       m["pushed"], render.duration(m["release_s"])] for m in migrations],
                     title="demand-paging migrations received")


# -- jobs: save, load, migrate ----------------------------------------------------------

async def cmd_save(ctx: Ctx):
    a = ctx.args
    args = {"envid": a.env, "name": a.name, "force": a.force, "pause": a.pause}
    if a.detach:
        return show_detached(ctx, await ctx.call("save", {**args, "detach": True}))
    res = await ctx.job("save", args, f"save {a.env}", trace=a.trace)
    if ctx.json:
        return ctx.emit(job_result(res))
    ctx.say(f"Save Image Successful: {a.name} ({render.plural(res['pages'], 'page')}, "
            f"{render.size(res['bytes'])}, {res['mib_per_s']:.1f} MiB/s)")


async def cmd_load(ctx: Ctx):
    a = ctx.args
    args = {"name": a.name, "resume": a.resume}
    if a.detach:
        return show_detached(ctx, await ctx.call("load", {**args, "detach": True}))
    res = await ctx.job("load", args, f"load {a.name}", trace=a.trace)
    if ctx.json:
        return ctx.emit(job_result(res))
    if a.resume:
        ctx.say(f"Load Image Successful, New Env {res['new_envid']} is running.")
    else:
        ctx.say(f"Load Image Successful, You can resume New Env: {res['new_envid']}")


def job_result(res: dict) -> dict:
    """A job's result with jmigctl's field names: envid is the env the job
    acted on (none for a load), new_envid the one it created."""
    out = dict(res)
    if "image" in out and "to" not in out and out.get("new_envid") is not None:
        out.pop("envid", None)                # a load: it created new_envid, acted on none
    return out


# Options of migrate that belong to some methods only: (dest, flag, default, methods).
METHOD_OPTIONS = (
    ("keep", "--keep", False, ("normal", "precopy")),
    ("push", "--push/--no-push", None, ("pgfault", "precopy+pgfault")),
    ("prefetch", "--prefetch", None, ("pgfault", "precopy+pgfault")),
    ("page_server", "--page-server", None, ("pgfault", "precopy+pgfault")),
    ("max_rounds", "--max-rounds", None, ("precopy", "precopy+pgfault")),
    ("downtime_limit", "--downtime-limit", None, ("precopy", "precopy+pgfault")),
    ("then", "--then", None, ("precopy", "precopy+pgfault")),
)


def check_method_options(a) -> str:
    """The migration's kind (normal, pgfault, precopy or precopy+pgfault);
    UsageError naming every option that does not apply to it."""
    kind = a.method + ("+pgfault" if a.method == "precopy" and a.then == "pgfault" else "")
    bad = [flag for dest, flag, default, kinds in METHOD_OPTIONS
           if getattr(a, dest) != default and kind not in kinds]
    if bad:
        why = {"normal": "a normal migration", "pgfault": "a pgfault migration",
               "precopy": "a precopy migration without --then pgfault",
               "precopy+pgfault": "--then pgfault (the origin keeps the pages until they "
                                  "have all moved)"}[kind]
        raise UsageError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to "
                         f"{why}; see `jmigctl migrate -h` for what each method takes")
    return kind


def _migrate_args(a) -> dict:
    kind = check_method_options(a)
    args = {"envid": a.env, "to": a.to, "method": a.method, "keep": a.keep, "resume": a.resume}
    if a.timeout is not None:
        args["timeout"] = a.timeout
    if kind in ("pgfault", "precopy+pgfault"):
        args["push"] = True if a.push is None else a.push
        args["prefetch"] = a.prefetch or 0
        if a.page_server:
            args["page_server"] = a.page_server
    if a.method == "precopy":
        args.update({"max_rounds": 8 if a.max_rounds is None else a.max_rounds,
                     "downtime_limit_ms": 50 if a.downtime_limit is None else a.downtime_limit,
                     "then": a.then or "stop"})
    return args


async def cmd_migrate(ctx: Ctx):
    a = ctx.args
    args = _migrate_args(a)
    if a.detach:
        return show_detached(ctx, await ctx.call("migrate", {**args, "detach": True}))
    res = await ctx.job("migrate", args, f"migrate {a.env}", trace=a.trace)
    if ctx.json:
        return ctx.emit(job_result(res))
    show_migration(ctx, res, a.to)


def show_detached(ctx: Ctx, job: dict) -> None:
    if ctx.json:
        return ctx.emit(job)
    what = f"{job['kind']} of env {job['envid']}" if job.get("envid") else job["kind"]
    ctx.say(f"Job {job['id']} started: {what} ({job['target']}); "
            f"{ctx.cmd('jobs watch ' + job['id'])} follows it")


async def cmd_jobs(ctx: Ctx):
    a = ctx.args
    if a.action == "watch":
        if not a.id:
            raise UsageError(f"jobs watch needs a job id ({ctx.cmd('jobs')} lists them)")
        ctx.job_id = a.id

        def on_push(kind, data):
            if kind == "trace" and isinstance(data, dict):
                ctx.show_trace(data.get("lines") or [])
            bar.update(kind, data)
        with render.ProgressBar(ctx.errconsole, f"job {a.id}") as bar:
            res = await ctx.call("watch", {"job": a.id}, on_push=on_push)
        if ctx.json:
            return ctx.emit(job_result(res))
        ctx.say(f"Job {a.id} finished: " + ", ".join(
            f"{k} {v}" for k, v in res.items() if k in ("envid", "new_envid", "image", "to")))
        return
    if a.action is not None or a.id is not None:
        raise UsageError(f"unknown jobs action {a.action!r}: use `jobs` or `jobs watch ID`")
    jobs = (await ctx.call("jobs"))["jobs"]
    if ctx.json:
        return ctx.emit(jobs)
    why = any(j.get("reason") for j in jobs)     # started by a drain or the balancer
    render.table(ctx.console, ["JOB", "KIND", "ENV", "TARGET", "METHOD", "STATE", "PROGRESS"]
                 + (["REASON"] if why else []),
                 [[j["id"], j["kind"], j["envid"] or "-", j["target"], j["method"] or "-",
                   j["state"], _progress_text(j) if not j.get("error")
                   else j["error"]["message"]] + ([j.get("reason") or "-"] if why else [])
                  for j in jobs])


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
    ctx.say(f"You have successfully moved Env {res['envid']} to {to}.")
    if res.get("resumed"):
        ctx.say(f"Process Migration Finished, New Env {res['new_envid']} is running on {to}.")
    else:
        ctx.say(f"Process Migration Finished, You can resume New Env: {res['new_envid']}")
    method = res["method"]
    parts = [f"method {method}"]
    if method == "pgfault":
        parts.append(f"{render.plural(res['pages'], 'page table entry')} "
                     f"({render.size(res['bytes'])}); the pages follow on demand")
    else:
        parts += [render.plural(res["pages"], "page"), render.size(res["bytes"])]
    parts.append(f"total {render.duration(res['total_s'])}")
    if res.get("downtime_s") is not None:
        parts.append(f"downtime {render.duration(res['downtime_s'])}")
    if res.get("mib_per_s") and method != "pgfault" and res["bytes"] >= 1 << 20:
        parts.append(f"{res['mib_per_s']:.1f} MiB/s")
    if res.get("rounds") is not None:
        parts.append(render.plural(res["rounds"], "round"))
    if res.get("postcopy_pages"):
        parts.append(f"{render.plural(res['postcopy_pages'], 'page')} left to demand paging")
    ctx.say("  " + ", ".join(parts).replace("page table entrys", "page table entries"))


async def cmd_recover(ctx: Ctx):
    res = await ctx.call("recover", {"envid": ctx.args.env, "force": ctx.args.force})
    if ctx.json:
        return ctx.emit(res)
    found = f"{res['found']}; " if res.get("found") else ""
    ctx.say(f"Env {ctx.args.env}: {found}{res['outcome']}")


# -- the rest ---------------------------------------------------------------------------
# Imported when used: together these modules take longer to import than all of
# the above (the kernel, for `run`), and every command would pay for them.

def cmd_image(ctx: Ctx):
    from .image import COMMANDS
    fn = COMMANDS[ctx.args.image_cmd]
    return trio.run(fn, ctx) if inspect.iscoroutinefunction(fn) else fn(ctx)


def cmd_run(ctx: Ctx):
    from .run import run
    return run(ctx)


def cmd_shell(ctx: Ctx):
    from .shell import Shell
    return Shell(ctx, run_line=main).loop()


def cmd_demo(ctx: Ctx):
    if ctx.args.cluster and ctx.args.distributed:
        raise UsageError("demo: --cluster and --distributed are two demos; give one")
    if ctx.args.distributed:
        from .distributed_demo import distributed_demo
        return distributed_demo(ctx)
    if ctx.args.cluster:
        from .cluster_demo import cluster_demo
        return cluster_demo(ctx)
    from .demo import demo
    return demo(ctx)


def cmd_top(ctx: Ctx):
    from .top import top
    return top(ctx)


def cmd_web(ctx: Ctx):
    from .web import web
    return web(ctx)


def cmd_completion(ctx: Ctx):
    from .completion import script
    ctx.out.write(script(ctx.args.shell, build_parser()))
    ctx.out.flush()


# -- the parser ----------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so that errors
    follow --json and the shell goes on."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)      # `ps --node X` must not mean --nodes
        super().__init__(*args, **kw)

    def error(self, message: str):
        exc = UsageError(f"{message} (`{self.prog} -h` for help)")
        exc.usage = self.format_usage().rstrip()
        raise exc


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="jmigctl", description="Drive jmig nodes: processes, images and "
               "migration.", formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=_examples("jmigctl --node 127.0.0.2:50001 ps",
                                "jmigctl migrate 4100 --to 127.0.0.3:50001 --method pgfault",
                                "jmigctl ps --nodes 127.0.0.2:50001,127.0.0.3:50001 -o wide",
                                "jmigctl shell")
               + f"\n\nexit codes: {EXIT_TEXT}")
    p.add_argument("--node", type=node_address, metavar="HOST:P",
                   help=f"the node to talk to (default $JMIG_NODE or {DEFAULT_NODE})")
    p.add_argument("--secret-file", metavar="FILE", help="cluster secret (default "
                   "$JMIG_SECRET_FILE or ~/.config/jmig/secret)")
    p.add_argument("--version", action="version", version=f"jmigctl {jmig.__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)

    def add(name, fn, help, examples, output=False):
        sp = sub.add_parser(name, help=help, description=help,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=_examples(*examples) + f"\n\nexit codes: {EXIT_TEXT}")
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true",
                        help="print the result (or the error) as JSON")
        _connection_options(sp)
        if output:
            sp.add_argument("-o", "--output", choices=("table", "wide", "json"),
                            default="table", help="table (default), wide: more columns, "
                            "json: as --json")
        return sp

    def env_arg(sp, help="the env: decimal (4100) or hex (0x1004)"):
        sp.add_argument("env", type=parse_env, metavar="ENV", help=help)

    sp = add("ps", cmd_ps, "list envs (of several nodes with --nodes or $JMIG_NODES)",
             ["jmigctl ps", "jmigctl ps -q", "jmigctl ps | awk '$5 == \"loop\" {print $1}'",
              "jmigctl ps --nodes 127.0.0.2:50001,127.0.0.3:50001",
              "JMIG_NODES=127.0.0.2:50001,127.0.0.3:50001 jmigctl ps --json"], output=True)
    sp.add_argument("-q", "--quiet", action="store_true", help="print env ids only")
    sp.add_argument("--nodes", metavar="A,B,...", help="nodes HOST:P to list, comma-separated, "
                    "with a NODE column (default $JMIG_NODES when --node is not given)")
    sp.add_argument("--all", action="store_true", help="every member of the cluster of "
                    "--node (`jmigctl nodes`), with a NODE column")
    sp = add("spawn", cmd_spawn, "start a program (bundled, on the node's disk, or a local "
             "ELF, which is uploaded and kept on the node's disk); options go before PROGRAM, "
             "everything after it is the program's",
             ["jmigctl spawn loop", "jmigctl spawn --paused memtest 256 32",
              "jmigctl spawn ./examples/user/hello.elf"])
    sp.add_argument("--paused", action="store_true", help="create it paused")
    sp.add_argument("program", metavar="PROGRAM", help="a program name (`jmigctl ls`) or a "
                    "path to a JOS ELF")
    sp.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="the program's arguments")
    for name, fn, h in (("pause", cmd_pause, "pause an env"),
                        ("resume", cmd_resume, "resume an env"),
                        ("kill", cmd_kill, "kill an env")):
        sp = add(name, fn, h, [f"jmigctl {name} 4100", f"jmigctl {name} 0x1004"])
        env_arg(sp)
    sp = add("copy", cmd_copy, "clone an env (the copy starts paused)",
             ["jmigctl copy 4100", "jmigctl copy --json 4100"])
    env_arg(sp)
    add("ls", cmd_ls, "images, uploaded programs and bundled programs on the node",
        ["jmigctl ls", "jmigctl ls --json"], output=True)
    add("info", cmd_info, "the node: name, ports, memory, envs, uptime",
        ["jmigctl info", "jmigctl --node 127.0.0.3:50001 info --json"])
    sp = add("vmmap", cmd_vmmap, "an env's mapped memory", ["jmigctl vmmap 4100"], output=True)
    env_arg(sp)
    sp = add("console", cmd_console, "show the node's console (what its programs printed)",
             ["jmigctl console", "jmigctl console -f", "jmigctl console --json --lines 10"])
    sp.add_argument("-f", "--follow", action="store_true",
                    help="keep printing new output (--json: one object per line); exits 3 "
                    "when the node goes away")
    sp.add_argument("--lines", type=int_range(0, 4096), default=200, metavar="N",
                    help="recent output chunks to show first (default 200)")
    add("stats", cmd_stats, "node and pager statistics", ["jmigctl stats", "jmigctl stats --json"])

    sp = add("save", cmd_save, "save a paused env to an image on the node's disk (a job)",
             ["jmigctl save 4100 my_image", "jmigctl save --pause --force 4100 my_image",
              "jmigctl save --trace 4100 my_image"])
    env_arg(sp)
    sp.add_argument("name", metavar="NAME", help="the image's name (letters, digits, . _ -)")
    sp.add_argument("--force", action="store_true", help="replace an existing image")
    sp.add_argument("--pause", action="store_true", help="pause a running env for the save")
    _job_options(sp)
    sp = add("load", cmd_load, "restore an image as a new paused env (a job)",
             ["jmigctl load my_image", "jmigctl load --resume my_image"])
    sp.add_argument("name", metavar="NAME", help="the image (`jmigctl ls` lists them)")
    sp.add_argument("--resume", action="store_true", help="resume it at once")
    _job_options(sp)

    sp = add("migrate", cmd_migrate, "move an env to another node (a job of this node: "
             "Ctrl-C stops watching it, not the job)",
             ["jmigctl migrate 4100 --to 127.0.0.3:50001",
              "jmigctl migrate 4100 --to 127.0.0.3:50001 --method pgfault --prefetch 4",
              "jmigctl migrate 4100 --to 127.0.0.3:50001 --method precopy --then pgfault",
              "jmigctl migrate 4100 --to 127.0.0.3:50001 --trace",
              "jmigctl migrate 4100 --to 127.0.0.3:50001 --detach"])
    env_arg(sp)
    sp.add_argument("--to", required=True, type=node_address, metavar="HOST:P",
                    help="the destination node (its base port P)")
    sp.add_argument("--method", choices=("normal", "pgfault", "precopy"), default="normal",
                    help="normal: copy every page, then run there (default); pgfault: send "
                    "the page table only, pages follow on demand; precopy: copy while it runs")
    sp.add_argument("--keep", action="store_true",
                    help="normal, precopy: keep the source copy, paused")
    sp.add_argument("--resume", action="store_true", help="resume it on the destination")
    sp.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                    help="pgfault: push the remaining pages in the background (default on)")
    sp.add_argument("--prefetch", type=int_range(0, MAX_PREFETCH), metavar="N",
                    help=f"pgfault: also send the next N pages with each fault (0..{MAX_PREFETCH})")
    sp.add_argument("--page-server", metavar="HOST", help="pgfault: the address the "
                    "destination reaches this node's page server at (default: the address "
                    "this node connects from)")
    sp.add_argument("--max-rounds", type=int_range(1, 1000), metavar="N",
                    help="precopy: most copy rounds (1..1000, default 8)")
    sp.add_argument("--downtime-limit", type=int_range(0, 3_600_000), metavar="MS",
                    help="precopy: stop when the rest can be sent within MS (default 50)")
    sp.add_argument("--then", choices=("pgfault",),
                    help="precopy: leave the last dirty pages to demand paging")
    _job_options(sp)
    sp.add_argument("--timeout", type=seconds, metavar="S",
                    help="give up (and roll back) after S seconds without progress (default 10)")

    sp = add("jobs", cmd_jobs, "migrate, save and load jobs: in flight and the last finished",
             ["jmigctl jobs", "jmigctl jobs watch 3fa2c1", "jmigctl jobs --json"], output=True)
    sp.add_argument("action", nargs="?", choices=("watch",), help="watch: follow one job")
    sp.add_argument("id", nargs="?", metavar="ID", help="the job to watch")
    sp = add("cancel", cmd_cancel, "stop a job before its commit; the env stays as it was",
             ["jmigctl cancel 3fa2c1"])
    sp.add_argument("id", metavar="ID", help="the job (`jmigctl jobs` lists them)")
    sp = add("recover", cmd_recover, "settle an env left by a failed migration",
             ["jmigctl recover 4100", "jmigctl recover --force 4100"])
    env_arg(sp)
    sp.add_argument("--force", action="store_true",
                    help="the other node is gone for good: settle the env here")

    sp = sub.add_parser("image", help="images: inspect or verify a file, export, import or "
                        "copy between nodes", description="Images: read a file offline, or "
                        "move an image between a node's disk, a local file and another node.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=_examples("jmigctl image inspect my_image.img",
                                         "jmigctl image export my_image my_image.img",
                                         "jmigctl image import my_image.img other_name",
                                         "jmigctl image copy my_image --to 127.0.0.3:50001"))
    isub = sp.add_subparsers(dest="image_cmd", metavar="ACTION", parser_class=Parser)
    isub.required = True

    def iadd(name, help, examples):
        ip = isub.add_parser(name, help=help, description=help,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=_examples(*examples) + f"\n\nexit codes: {EXIT_TEXT}")
        ip.add_argument("--json", action="store_true",
                        help="print the result (or the error) as JSON")
        _connection_options(ip)
        ip.set_defaults(fn=cmd_image)
        return ip
    ip = iadd("inspect", "header, page map and checksum of an image file (offline)",
              ["jmigctl image inspect my_image.img", "jmigctl image inspect --json x.img"])
    ip.add_argument("file", metavar="FILE", help="an image file")
    ip = iadd("verify", "check an image file completely (offline)",
              ["jmigctl image verify my_image.img"])
    ip.add_argument("file", metavar="FILE", help="an image file")
    ip = iadd("export", "copy an image from the node's disk to a local file, verified",
              ["jmigctl image export my_image my_image.img"])
    ip.add_argument("name", metavar="NAME", help="the image on the node (`jmigctl ls`)")
    ip.add_argument("file", metavar="FILE", help="the local file to write")
    ip.add_argument("--force", action="store_true", help="replace an existing FILE")
    ip = iadd("import", "copy a local image file to the node's disk (checked before and "
              "after)", ["jmigctl image import my_image.img", "jmigctl image import x.img y"])
    ip.add_argument("file", metavar="FILE", help="the local image file")
    ip.add_argument("name", nargs="?", metavar="NAME",
                    help="its name on the node (default: FILE's name without .img)")
    ip.add_argument("--force", action="store_true", help="replace an image of that name")
    ip = iadd("copy", "copy an image from this node's disk to another node's",
              ["jmigctl image copy my_image --to 127.0.0.3:50001",
               "jmigctl image copy my_image --to 127.0.0.3:50001 --as saved"])
    ip.add_argument("name", metavar="NAME", help="the image on this node")
    ip.add_argument("--to", required=True, type=node_address, metavar="HOST:P",
                    help="the other node")
    ip.add_argument("--as", dest="as_name", metavar="NAME", help="its name there (default NAME)")
    ip.add_argument("--force", action="store_true", help="replace an image of that name there")

    sp = add("run", cmd_run, "run a program on an in-process kernel and print its console "
             "(no node needed); options go before PROGRAM, everything after it is the "
             "program's", ["jmigctl run hello", "jmigctl run --cpus 2 primes",
                           "jmigctl run --json --max-instructions 100000 spin"])
    sp.add_argument("--cpus", type=int_range(1, 64), default=1, metavar="N",
                    help="virtual CPUs (1..64, default 1)")
    sp.add_argument("--max-instructions", type=int_range(1, 10**12), default=100_000_000,
                    metavar="N", help="stop after N instructions (default 100000000)")
    sp.add_argument("--memory", default="64M", metavar="SIZE",
                    help="physical memory (default 64M)")
    sp.add_argument("program", metavar="PROGRAM",
                    help="a bundled program name or a path to a JOS ELF")
    sp.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="the program's arguments (everything after PROGRAM)")
    sp = add("top", cmd_top, "a live view of one or more nodes: envs, CPU share, pages, "
             "state, jobs in flight", ["jmigctl top",
                                       "jmigctl top --nodes 127.0.0.2:50001,127.0.0.3:50001",
                                       "jmigctl top --interval 0.5 --iterations 10"])
    sp.add_argument("--nodes", metavar="A,B,...",
                    help="nodes HOST:P to watch (default $JMIG_NODES, or --node)")
    sp.add_argument("--all", action="store_true", help="every member of the cluster of --node")
    sp.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                    help="seconds between refreshes (default 1)")
    sp.add_argument("--iterations", type=int_range(1, 10**9), metavar="N",
                    help="stop after N refreshes (default: until Ctrl-C on a terminal, 1 "
                    "otherwise)")
    sp = add("nodes", cmd_nodes, "the members of the node's cluster: state, envs, envs that "
             "want the CPU, CPU share, free memory, jobs, flags (cordoned, balance)",
             ["jmigctl nodes", "jmigctl --node 127.0.0.3:50001 nodes --json"])
    sp = add("drain", cmd_drain, "move every env off NODE to the other members (least loaded "
             "first) and cordon it; `uncordon` undoes the cordon",
             ["jmigctl drain 127.0.0.3:50001", "jmigctl drain 127.0.0.3:50001 --method normal"])
    sp.add_argument("target", type=node_address, metavar="NODE", help="the node to empty, "
                    "HOST:P")
    sp.add_argument("--method", choices=("auto", "normal", "precopy", "pgfault"),
                    default="auto", help="how envs move (default auto: pre-copy for running "
                    "envs, normal for paused ones)")
    sp.add_argument("--force", action="store_true", help="move pinned envs too")
    for name, fn, h in (("cordon", cmd_cordon, "mark NODE unschedulable: no drain or "
                         "balancer sends envs there"),
                        ("uncordon", cmd_uncordon, "make NODE schedulable again")):
        sp = add(name, fn, h, [f"jmigctl {name} 127.0.0.3:50001"])
        sp.add_argument("target", type=node_address, metavar="NODE", help="the node, HOST:P")
    sp = add("balance", cmd_balance, "switch automatic load balancing on or off on every "
             "member of the cluster, or show it (status: each node's flag and last decisions)",
             ["jmigctl balance on", "jmigctl balance off", "jmigctl balance status"])
    sp.add_argument("action", choices=("on", "off", "status"), help="on, off or status")
    for name, fn, h in (("pin", cmd_pin, "keep an env where it is: the balancer never "
                         "moves it (drain does only with --force)"),
                        ("unpin", cmd_unpin, "let the balancer move an env again")):
        sp = add(name, fn, h, [f"jmigctl {name} 4100"])
        env_arg(sp)
    sp = add("web", cmd_web, "serve a live web view of the cluster (nodes, envs, jobs, an "
             "env's pages as they move); prints the URL with its login token",
             ["jmigctl web --nodes 127.0.0.2:50001,127.0.0.3:50001",
              "jmigctl --node 127.0.0.2:50001 web --port 8080 --allow-control",
              "jmigctl web --print-token"])
    sp.add_argument("--nodes", metavar="A,B,...", help="nodes HOST:P to show (default "
                    "$JMIG_NODES, or --node and the members of its cluster)")
    sp.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                    help="the address to serve on (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int_range(0, 65535), default=8080, metavar="PORT",
                    help="the port to serve on (default 8080; 0: any free one)")
    sp.add_argument("--allow-control", action="store_true", help="show pause, resume and "
                    "migrate buttons (default: read-only)")
    sp.add_argument("--print-token", action="store_true", help="print the login token "
                    "and exit")
    sp = add("completion", cmd_completion, "print a shell completion script",
             ["jmigctl completion bash > ~/.local/share/bash-completion/completions/jmigctl",
              "jmigctl completion zsh > ~/.zfunc/_jmigctl",
              "source <(jmigctl completion bash)"])
    sp.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    sp = add("shell", cmd_shell, "an interactive prompt with the original project's commands",
             ["jmigctl shell", "jmigctl --node 127.0.0.3:50001 shell",
              "echo ps | jmigctl shell"])
    sp.add_argument("--trace", action="store_true", help="start with trace on")
    sp = add("demo", cmd_demo, "start two local nodes and play the original walkthrough "
             "(--cluster: four nodes, the balancer and a drain)",
             ["jmigctl demo", "jmigctl demo --fast --host 127.0.0.5", "jmigctl demo --cluster"])
    sp.add_argument("--cluster", action="store_true", help="start four local nodes that join "
                    "each other, start 12 CPU-bound envs on one, show the balancer spread "
                    "them, then drain one node")
    sp.add_argument("--distributed", action="store_true", help="start four local nodes "
                    "(--node-id 0..3), run the prime sieve on one and move its first "
                    "filters to the other three: a cluster-wide ps shows where each stage "
                    "lives")
    sp.add_argument("--fast", action="store_true", help="no pauses between steps")
    sp.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                    help="the loopback address the nodes bind (default 127.0.0.1)")
    sp.add_argument("--base-port", type=int_range(1, 65000), default=0, metavar="P",
                    help="first node's P (default: find free ports near 50001)")
    return p


def _connection_options(sp) -> None:
    """--node and --secret-file after the command too (`jmigctl ps --node X`)."""
    sp.add_argument("--node", type=node_address, metavar="HOST:P", default=argparse.SUPPRESS,
                    help="the node to talk to (as before the command)")
    sp.add_argument("--secret-file", metavar="FILE", default=argparse.SUPPRESS,
                    help="cluster secret (as before the command)")


def _job_options(sp) -> None:
    sp.add_argument("--detach", action="store_true", help="start the job and return at once "
                    "(`jmigctl jobs watch ID` follows it)")
    sp.add_argument("--trace", action="store_true", help="print the original project's "
                    "per-step lines (Send Page: 0x00800000, Sequence: 1, ...) instead of a "
                    "progress bar")


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv or any(a in ("-ojson", "--output=json") for a in argv) or any(
        a in ("-o", "--output") and b == "json" for a, b in zip(argv, argv[1:]))


def main(argv: list[str] | None = None, environ=None, stdout=None, stderr=None,
         prog: str = "jmigctl") -> int:
    """Run one jmigctl command line; its exit code.  prog "" means the
    shell runs it (messages and hints in the shell's words)."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        # argparse prints --help and --version to sys.stdout: send them to
        # the streams this call was given.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    except UsageError as exc:
        return report(_wants_json(argv), exc, out, err, prog)
    except BrokenPipeError:
        return _pipe_closed(out)
    if not getattr(args, "fn", None):
        parser.print_help(err)
        return EXIT_USAGE
    ctx = Ctx(args, environ, out, err, prog)
    try:
        if inspect.iscoroutinefunction(args.fn):
            result = trio.run(args.fn, ctx)
        else:
            result = args.fn(ctx)
        return result if isinstance(result, int) else EXIT_OK
    except KeyboardInterrupt:
        if getattr(args, "follow", False):        # console -f: Ctrl-C is how it ends
            return EXIT_OK
        if ctx.job_id:
            ctx.note(f"{prog or 'note'}: detached: the job goes on; "
                     f"{ctx.cmd('jobs watch ' + ctx.job_id)} follows it")
            return EXIT_OK
        return report(ctx.json, CtlError("interrupted"), out, err, prog)
    except BaseException as exc:              # every failure: a message and an exit code
        first = leaf(exc)
        if isinstance(first, BrokenPipeError):
            return _pipe_closed(out)
        if isinstance(first, KeyboardInterrupt):
            return report(ctx.json, CtlError("interrupted"), out, err, prog)
        if isinstance(first, SystemExit):
            raise
        failure = classify(first, ctx)
        if failure.code == "internal" and environ.get("JMIG_DEBUG"):
            traceback.print_exception(first, file=err)
        try:
            return report(ctx.json, failure, out, err, prog)
        except BrokenPipeError:
            return _pipe_closed(out)


def _pipe_closed(out) -> int:
    """The reader of our output went away (`| head`): stop quietly.  The
    rest of the output goes nowhere, so that Python's final flush does not
    complain either."""
    try:
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
