"""Nursery helpers.

trio raises the exceptions of a nursery's tasks inside an ExceptionGroup.
Where a nursery only runs helpers of one operation (a reader beside a
writer), the caller wants the one real exception: `nursery()` re-raises a
group's only leaf as itself (groups of several stay groups).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

import trio


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out = []
        for e in exc.exceptions:
            out.extend(leaves(e))
        return out
    return [exc]


@asynccontextmanager
async def nursery():
    try:
        async with trio.open_nursery() as n:
            yield n
    except BaseExceptionGroup as eg:
        ls = leaves(eg)
        real = [e for e in ls if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        if not real and len(ls) == 1:
            raise ls[0] from None
        raise
