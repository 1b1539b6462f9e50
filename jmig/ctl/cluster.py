"""jmigctl's cluster commands: nodes, drain, cordon, uncordon, balance,
pin, unpin; and the member list behind `ps --all` and `top --all`.

The node given by --node (or $JMIG_NODE) answers for the cluster: its
member list (`nodes`) names the others.  `drain NODE`, `cordon NODE` and
`uncordon NODE` talk to NODE itself; `balance on|off` to every alive
member.
"""
from __future__ import annotations

import trio

from . import render
from .exits import EXIT_FAILED, Unreachable

NODE_COLUMNS = ["NODE", "NAME", "ID", "STATE", "ENVS", "RUNNABLE", "CPU", "FREE", "JOBS", "FLAGS",
                "HEARD"]


async def members(ctx) -> tuple[list[str], list[dict]]:
    """(addresses of the answering node and its alive members, the other
    members: failed or joining) from --node's member list."""
    view = (await ctx.call("nodes"))["nodes"]
    alive = [v["addr"] for v in view if v["state"] in ("alive", "leaving")]
    # The answering node as the user named it (its own idea of its address
    # may be 0.0.0.0's or another alias).
    if view and view[0].get("self"):
        alive[0] = ctx.node
    return alive, [v for v in view if v["state"] not in ("alive", "leaving")]


def member_error(v: dict) -> Unreachable:
    heard = v.get("heard_s")
    when = "never heard from" if heard is None else f"not heard from for {heard:.1f} s"
    return Unreachable(f"member {v['state']}: {when}" + (f" ({v['error']})" if v.get("error")
                                                         else ""))


def _flags(load: dict) -> str:
    out = [f for f in ("cordoned", "balance", "stopping") if load.get(f)]
    return ",".join(out) or "-"


async def cmd_nodes(ctx):
    view = (await ctx.call("nodes"))["nodes"]
    if ctx.json:
        return ctx.emit(view)
    rows = []
    for v in view:
        load = v.get("load") or {}
        fresh = v["state"] in ("alive", "leaving")
        rows.append([
            v["addr"] + (" *" if v.get("self") else ""), v.get("name") or "-",
            "-" if v.get("node_id") is None else v["node_id"], v["state"],
            load.get("envs", "-") if fresh else "-", load.get("runnable", "-") if fresh else "-",
            f"{load['cpu']:.0%}" if fresh and "cpu" in load else "-",
            render.size(load["free"]) if fresh and "free" in load else "-",
            load.get("jobs", "-") if fresh else "-", _flags(load) if fresh else "-",
            "-" if v.get("self") else render.duration(v.get("heard_s"))
            if v.get("heard_s") is not None else "never"])
    render.table(ctx.console, NODE_COLUMNS, rows)
    ctx.note("* the node that answered")


async def cmd_drain(ctx):
    a = ctx.args

    def on_push(kind, data):
        if kind != "drain" or not isinstance(data, dict) or ctx.json:
            return
        env = data.get("envid")
        state = data.get("state")
        if state == "moving":
            ctx.say(f"env {env}: moving to {data.get('to')} by {data.get('method')} "
                    f"(job {data.get('job')})")
        elif state == "moved":
            new = data.get("new_envid")
            ctx.say(f"env {env}: moved to {data.get('to')}"
                    + (f" as env {new}" if new not in (None, env) else ""))
        elif state == "skipped":
            ctx.say(f"env {env}: skipped ({data.get('reason')})")
        elif state == "failed":
            err = data.get("error") or {}
            ctx.say(f"env {env}: FAILED: {err.get('message')} [{err.get('code')}]")
    res = await ctx.call("drain", {"method": a.method, "force": a.force}, on_push=on_push,
                         node=a.target)
    if ctx.json:
        ctx.emit(res)
    else:
        ctx.say(f"{a.target} drained: {render.plural(len(res['moved']), 'env')} moved, "
                f"{len(res['failed'])} failed, {len(res['skipped'])} skipped; "
                f"{render.plural(len(res['left']), 'env')} left there; it stays cordoned "
                f"({ctx.cmd('uncordon ' + a.target)} undoes it)")
    if res["failed"] or res["left"]:
        return EXIT_FAILED


async def _cordon(ctx, on: bool):
    res = await ctx.call("cordon", {"on": on}, node=ctx.args.target)
    if ctx.json:
        return ctx.emit(res)
    ctx.say(f"{ctx.args.target} is " + ("cordoned: no drain or balancer sends envs there"
                                        if on else "schedulable again"))


async def cmd_cordon(ctx):
    return await _cordon(ctx, True)


async def cmd_uncordon(ctx):
    return await _cordon(ctx, False)


async def cmd_balance(ctx):
    """balance on|off: switch every alive member; balance status: each
    one's flag and last decisions.  Nodes by address (as `nodes` shows them)."""
    action = ctx.args.action
    on = {"on": True, "off": False, "status": None}[action]
    nodes, others = await members(ctx)
    results: dict[str, dict] = {}
    errors: dict[str, str] = {v["addr"]: member_error(v).message for v in others}

    async def one(n):
        try:
            results[n] = await ctx.call("balance", {"on": on} if on is not None else {"last": 5},
                                        node=n)
        except Exception as exc:                     # reported per node, the others go on
            errors[n] = str(getattr(exc, "message", "") or exc)
    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n)
    if ctx.json:
        ctx.emit({"nodes": [{**results[n], "name": results[n]["node"], "node": n}
                            for n in nodes if n in results],
                  "errors": [{"node": n, "message": m} for n, m in errors.items()]})
    else:
        for n in nodes:
            if n in results:
                r = results[n]
                ctx.say(f"{n}: balancing {'on' if r['balance'] else 'off'}")
                for d in r.get("decisions") or []:
                    ctx.say(f"  job {d['job']}: env {d['envid']} -> {d['to']}: {d['reason']}")
        for n, m in errors.items():
            ctx.note(f"jmigctl: {n}: {m}")
    if errors:
        return EXIT_FAILED


async def _pin(ctx, on: bool):
    res = await ctx.call("pin", {"envid": ctx.args.env, "on": on})
    if ctx.json:
        return ctx.emit(res)
    ctx.say(f"env {ctx.args.env} is " + ("pinned: the balancer leaves it where it is"
                                         if on else "no longer pinned"))


async def cmd_pin(ctx):
    return await _pin(ctx, True)


async def cmd_unpin(ctx):
    return await _pin(ctx, False)
