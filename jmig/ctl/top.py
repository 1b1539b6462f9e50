"""jmigctl top: a live view of one or more nodes, refreshed every
--interval seconds: per node its memory and envs (program, CPU share,
pages, state) and its jobs in flight with progress bars.

CPU share is the env's part of the slices its node scheduled since the
last refresh (its `runs` counter), so the first view shows "-".  On a
terminal the view redraws in place (rich's Live) until Ctrl-C or
--iterations; piped, each refresh prints as plain text, once unless
--iterations says more."""
from __future__ import annotations

import json
import time

import trio
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import render
from .cluster import members
from .exits import CtlError
from .failures import classify


class Snapshot:
    def __init__(self):
        self.nodes: dict[str, dict] = {}      # node -> {info, envs, jobs} or {error}
        self.when = time.time()


async def _poll(ctx, node: str) -> dict:
    try:
        info = await ctx.call("info", node=node)
        envs = (await ctx.call("ps", node=node))["envs"]
        jobs = [j for j in (await ctx.call("jobs", node=node))["jobs"]
                if j["state"] == "running"]
        return {"info": info, "envs": envs, "jobs": jobs}
    except Exception as exc:
        return {"error": classify(exc, ctx, node)}


async def snapshot(ctx, nodes: list[str]) -> Snapshot:
    snap = Snapshot()
    results: dict[str, dict] = {}

    async def one(n):
        results[n] = await _poll(ctx, n)
    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n)
    snap.nodes = {n: results[n] for n in nodes}
    return snap


def shares(prev: Snapshot | None, snap: Snapshot) -> dict[tuple[str, int], float]:
    """(node, envid) -> part of the node's slices since prev."""
    out = {}
    for n, d in snap.nodes.items():
        old = {e["envid"]: e["runs"] for e in (prev.nodes.get(n, {}).get("envs") or [])} \
            if prev else None
        if old is None or "envs" not in d:
            continue
        deltas = {e["envid"]: max(0, e["runs"] - old.get(e["envid"], 0)) for e in d["envs"]}
        total = sum(deltas.values())
        for envid, dv in deltas.items():
            out[(n, envid)] = dv / total if total else 0.0
    return out


def _job_line(j: dict):
    p = j.get("progress") or {}
    done, total = p.get("done", 0), p.get("total", 0)
    what = f"job {j['id']} {j['kind']} env {j['envid'] or '-'} -> {j['target']}" \
           f" ({j.get('method') or '-'}), {p.get('stage', 'starting')}"
    if p.get("round"):
        what += f", round {p['round']}"
    return what, done, total


def render_live(snap: Snapshot, share: dict) -> Group:
    parts = []
    for n, d in snap.nodes.items():
        if "error" in d:
            parts.append(Text(f"{n}: {d['error'].message}", style="red"))
            continue
        info = d["info"]
        m = info["memory"]
        parts.append(Text(f"{info['name']} ({n}): {render.plural(len(d['envs']), 'env')}, "
                          f"memory {render.size(m['used'])} of {render.size(m['total'])}, "
                          f"up {render.duration(info['uptime'])}", style="bold"))
        t = Table("ENV", "PROGRAM", "CPU", "PAGES", "STATUS", "STATE", box=None, pad_edge=False)
        for e in d["envs"]:
            s = share.get((n, e["envid"]))
            t.add_row(str(e["envid"]), e.get("program") or e["name"] or "-",
                      "-" if s is None else f"{s:.0%}", str(e["pages"]), e["status"],
                      e["state"] or "-")
        parts.append(t)
        for j in d["jobs"]:
            what, done, total = _job_line(j)
            row = Table.grid(padding=(0, 1))
            row.add_row(Text(what), ProgressBar(total=max(total, 1), completed=done, width=30),
                        Text(f"{done}/{total} pages"))
            parts.append(row)
        parts.append(Text(""))
    return Group(*parts)


def render_plain(ctx, snap: Snapshot, share: dict) -> None:
    out = ctx.out
    out.write(f"# {time.strftime('%H:%M:%S', time.localtime(snap.when))}\n")
    rows = []
    for n, d in snap.nodes.items():
        if "error" in d:
            out.write(f"# {n}: {d['error'].message}\n")
            continue
        for e in d["envs"]:
            s = share.get((n, e["envid"]))
            rows.append([n, e["envid"], e.get("program") or e["name"] or "-",
                         "-" if s is None else f"{s:.0%}", e["pages"], e["status"],
                         e["state"] or "-"])
    render.table(ctx.console, ["NODE", "ENV", "PROGRAM", "CPU", "PAGES", "STATUS", "STATE"], rows)
    for n, d in snap.nodes.items():
        for j in d.get("jobs") or []:
            what, done, total = _job_line(j)
            pct = f"{done / total:.0%}" if total else "-"
            out.write(f"{n}  {what}  {done}/{total} pages {pct}\n")
    out.flush()


def _json(snap: Snapshot, share: dict) -> dict:
    nodes = {}
    for n, d in snap.nodes.items():
        if "error" in d:
            nodes[n] = {"error": {"code": d["error"].code, "message": d["error"].message}}
            continue
        nodes[n] = {"name": d["info"]["name"], "memory": d["info"]["memory"],
                    "envs": [{**e, "program": e.get("program") or e["name"],
                              "cpu_share": share.get((n, e["envid"]))} for e in d["envs"]],
                    "jobs": d["jobs"]}
    return {"time": snap.when, "nodes": nodes}


async def _top(ctx) -> int:
    a = ctx.args
    nodes = (await members(ctx))[0] if a.all else ctx.nodes()
    live = ctx.console.is_terminal and not ctx.json
    iterations = a.iterations or (None if live else 1)
    prev = None
    count = 0
    errors: list[CtlError] = []
    if live:
        with Live(console=ctx.console, auto_refresh=False, transient=False) as view:
            while iterations is None or count < iterations:
                snap = await snapshot(ctx, nodes)
                share = shares(prev, snap)
                view.update(render_live(snap, share), refresh=True)
                prev, count = snap, count + 1
                errors = [d["error"] for d in snap.nodes.values() if "error" in d]
                if iterations is None or count < iterations:
                    await trio.sleep(a.interval)
    else:
        while count < iterations:
            snap = await snapshot(ctx, nodes)
            share = shares(prev, snap)
            if ctx.json:
                print(json.dumps(_json(snap, share)), file=ctx.out, flush=True)
            else:
                render_plain(ctx, snap, share)
            prev, count = snap, count + 1
            errors = [d["error"] for d in snap.nodes.values() if "error" in d]
            if count < iterations:
                await trio.sleep(a.interval)
    if errors and len(errors) == len(nodes):
        raise errors[0]
    return max((e.exit for e in errors), default=0)


def top(ctx) -> int:
    try:
        return trio.run(_top, ctx)
    except KeyboardInterrupt:
        return 0
