"""An env's page map for the web view (the `pagemap` control op): every
page below UTOP in one of six states, as runs of consecutive pages.

    present   here, unchanged (no D bit, or not changed this pre-copy round)
    remote    on the origin (a pgfault or hybrid destination)
    inflight  remote, and asked for (an env faulted on it, or a pull)
    dirty     changed since the last pre-copy round while rounds run,
              otherwise its PTE's D bit (as vmmap shows it)
    pushed    arrived by the origin's background push
    faulted   arrived because it was asked for (a fault, its prefetch, a pull)

The kernel gives present / remote / dirty (Kernel.page_states); the pager
knows the rest (Pager.arrivals), for ARRIVALS_KEEP seconds after the
migration's last page arrived.  How a page arrived is shown rather than
its D bit, so that a map taken during a pgfault migration shows where each
page came from.  Nothing here runs unless someone asks.
"""
from __future__ import annotations

import numpy as np

from ..kernel.snapshot import PAGE_DIRTY, PAGE_PRESENT, PAGE_REMOTE

STATES = ("present", "remote", "inflight", "dirty", "pushed", "faulted")
PRESENT, REMOTE, INFLIGHT, DIRTY, PUSHED, FAULTED = range(6)
MAX_RUNS = 16384                   # a reply stays far below the control frame limit

# Kernel.page_states' codes -> ours
_BASE = np.zeros(3, np.uint8)
_BASE[PAGE_PRESENT], _BASE[PAGE_REMOTE], _BASE[PAGE_DIRTY] = PRESENT, REMOTE, DIRTY


def pagemap(kernel, pager, envid: int) -> dict:
    """{envid, states, runs: [[first vpn, count, state index]], pages,
    counts: {state: pages}, truncated}: runs in address order; a run ends
    where the next page is not the next vpn or its state differs.  At most
    MAX_RUNS runs (truncated says if more were left out).  Raises the
    kernel's KernelError if there is no such env."""
    vpns, base = kernel.page_states(envid)
    states = _BASE[base]
    inflight, arrived = pager.arrivals(envid)
    if inflight or arrived:
        remote = states == REMOTE
        if inflight:
            asked = np.isin(vpns, np.fromiter(inflight, np.int64, len(inflight)))
            states[asked & remote] = INFLIGHT
        if arrived:
            keys = np.fromiter(arrived.keys(), np.int64, len(arrived))
            kinds = np.fromiter(arrived.values(), bool, len(arrived))
            local = ~remote
            for vset, code in ((keys[kinds], PUSHED), (keys[~kinds], FAULTED)):
                if len(vset):
                    states[np.isin(vpns, vset) & local] = code
    runs: list[list[int]] = []
    if len(vpns):
        start = np.ones(len(vpns), bool)
        start[1:] = (np.diff(vpns) != 1) | (states[1:] != states[:-1])
        firsts = np.flatnonzero(start)
        counts = np.diff(np.append(firsts, len(vpns)))
        runs = [list(r) for r in zip(vpns[firsts].tolist(), counts.tolist(),
                                     states[firsts].tolist())]
    totals = np.bincount(states, minlength=len(STATES)).tolist() if len(vpns) else [0] * 6
    return {"envid": envid, "states": list(STATES), "runs": runs[:MAX_RUNS],
            "pages": int(len(vpns)), "counts": dict(zip(STATES, totals)),
            "truncated": len(runs) > MAX_RUNS}
