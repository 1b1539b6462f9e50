"""Drain: move every env off this node to the other members and mark it
cordoned (no balancer or drain sends envs here; `uncordon` undoes it).

Envs move one at a time, smallest first, each to the least loaded
schedulable member with room (balance.choose_target), counting the envs
this drain has sent there already.  Each move is an ordinary migration job
(`jmigctl jobs` lists it, with the drain as its reason), so each env ends
on exactly one node whatever happens: a drain that is interrupted (its
client goes away, the node stops) stops after the move in flight, which
completes or rolls back as any migration does, and leaves the node
cordoned.  Running again moves what is left.

Method "auto" (the default): pre-copy for running envs (they keep running
while their pages are copied, and run on arrival), normal for paused ones
(they stay paused).  Pinned envs stay unless `force`.  Envs that appear
meanwhile (forks) are taken in a further pass, up to MAX_PASSES.  A member
that a move could not reach (or that refused it) is not chosen again by
this drain, and the env is tried once more elsewhere.
"""
from __future__ import annotations

from ..errors import Error
from .balance import choose_target, pages_of
from .migration import JobState

MAX_PASSES = 3
TRIES = 2                          # targets tried per env (the first one may have just failed)
LINK_ERRORS = ("unreachable", "link-lost", "timeout", "refused")
METHODS = ("auto", "normal", "precopy", "pgfault")


async def drain(node, method: str = "auto", force: bool = False, report=None) -> dict:
    """Drain node; report(dict) is awaited after each env's move starts and
    ends.  Returns {moved, failed, skipped, left}."""
    if method not in METHODS:
        raise Error(f"unknown method {method!r}: use {', '.join(METHODS)}", code="bad-request")
    if not node.cordoned:
        node.cordoned = True
        node.log.info("node cordoned", by="drain")
    k = node.kernel
    moved: list[dict] = []
    failed: list[dict] = []
    skipped: list[dict] = []
    tried: set[int] = set()
    avoid: set[str] = set()                  # members this drain could not reach

    async def tell(event: dict) -> None:
        if report is not None:
            await report(event)

    for _ in range(MAX_PASSES):
        todo = sorted(((pages_of(k, e), e.env_id, e) for e in k.live_envs()
                       if e.env_id not in tried), key=lambda t: t[:2])
        if not todo:
            break
        for _, envid, e in todo:
            tried.add(envid)
            if e.env_id != envid or not e.status:    # gone meanwhile (its parent killed it)
                continue
            if envid in node.balancer.pinned and not force:
                skipped.append({"envid": envid, "reason": "pinned (unpin it, or drain --force)"})
                await tell({"envid": envid, "state": "skipped", "reason": "pinned"})
                continue
            row = await _move(node, e, method, avoid, tell)
            (moved if row["state"] == "moved" else failed).append(row)
    for row in moved + failed:
        del row["state"]
    left = [e.env_id for e in k.live_envs()]
    node.log.info("drain finished", moved=len(moved), failed=len(failed),
                  skipped=len(skipped), left=len(left))
    return {"node": node.name, "moved": moved, "failed": failed, "skipped": skipped,
            "left": left}


async def _move(node, e, method: str, avoid: set[str], tell) -> dict:
    """Move env e to the best member not in avoid (TRIES targets at most);
    the row of its outcome, state "moved" or "failed"."""
    envid, pages = e.env_id, pages_of(node.kernel, e)
    how = method if method != "auto" else ("normal" if e.paused else "precopy")
    row: dict = {}
    for _ in range(TRIES):
        members = [m for m in node.membership.alive() if m.addr not in avoid]
        target = choose_target(members, pages * 4096)
        if target is None:
            if row:
                return row
            err = {"code": "no-memory" if members else "unreachable",
                   "message": f"no schedulable member has room for env {envid} ({pages} pages)"
                   if members else "this node knows no other member it can reach "
                   "(start it with --join)"}
            row = {"envid": envid, "state": "failed", "error": err}
            await tell(row)
            return row
        try:
            job = node.migrations.migrate(envid, target.addr, how, resume=not e.paused,
                                          reason=f"drain of {node.name}")
        except Error as exc:
            row = {"envid": envid, "state": "failed", "to": target.addr,
                   "error": {"code": exc.code, "message": exc.message}}
            await tell(row)
            return row
        target.sent.append(job)
        await tell({"envid": envid, "state": "moving", "to": target.addr, "job": job.id,
                    "method": how})
        await job.done.wait()
        if job.state is JobState.SUCCEEDED:
            row = {"envid": envid, "state": "moved", "to": target.addr, "method": how,
                   "new_envid": job.result.get("new_envid", envid), "job": job.id}
            await tell(row)
            return row
        row = {"envid": envid, "state": "failed", "to": target.addr, "job": job.id,
               "error": job.error}
        await tell(row)
        if (job.error or {}).get("code") not in LINK_ERRORS:
            return row
        avoid.add(target.addr)
    return row
