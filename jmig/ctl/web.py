"""jmigctl web: serve the live web view of a cluster (jmig/web/, docs/web.md).

A process of its own, not part of a node: it asks the nodes over their
control ports only while a browser watches, so a node gains no HTTP
surface and no work, and a bug here cannot stall a node."""
from __future__ import annotations

import trio

from ..web.auth import token_for
from .exits import UsageError


def web(ctx) -> int:
    a = ctx.args
    token = token_for(ctx.secret())
    if a.print_token:
        ctx.say(token)
        return 0
    nodes = ctx.nodes()
    from ..web.app import Web, serve
    w = Web(nodes, ctx.secret(), token, allow_control=a.allow_control)

    async def main():
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(serve, w, a.host, a.port)
            except OSError as exc:
                raise UsageError(f"cannot listen on {a.host}:{a.port}: {exc.strerror or exc}") \
                    from None
            host = f"[{a.host}]" if ":" in a.host else a.host
            ctx.say(f"jmig web: http://{host}:{port}/#token={token}")
            ctx.note(f"watching {', '.join(nodes)}"
                     + (" (and the members they list)" if len(nodes) == 1 else "")
                     + ("; control allowed (pause, resume, migrate)" if a.allow_control
                        else "; read-only") + "; Ctrl-C stops")
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    return 0
