"""A migration link's TCP socket (jmig.node.migration.link): keepalive is
on with the documented timing (docs/protocol.md: 5 s idle, probes every
2 s, 3 of them), so that a peer that vanished without a word is found out
within 11 s even while nothing is being sent; and the deadlines a node
reports (`jmigctl info`) are the documented ones."""
import socket

import trio

from jmig.ctl.client import ControlClient

from jmig.node.migration.link import Link
from jmig.proto.frames import DATA
from jmig.proto.wire import FramedStream

from .helpers import start


async def test_a_link_over_tcp_turns_keepalive_on_with_the_documented_timing():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted = trio.Event()
        nursery.start_soon(_accept_one, listeners[0], accepted)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        link = Link(FramedStream(stream, DATA))
        sock = stream.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (5, 2, 3)
        await accepted.wait()
        await link.fs.stream.aclose()
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()


async def _accept_one(listener, accepted):
    conn = await listener.accept()
    accepted.set()
    async with conn:
        await trio.sleep_forever()


async def test_a_node_reports_the_documented_deadlines(cluster):
    # docs/protocol.md, "Deadlines": progress 10 s (the default of
    # `migrate --timeout`), a prepared env's wait for the commit 5 s, the
    # source's wait for committed 5 s, a status question 3 s, the wait for
    # started 5 s; a remote IPC request 5 s (docs/kernel.md).
    a = await start(cluster, "a")
    async with await ControlClient.open(cluster.addr(a), cluster.secret) as c:
        info = await c.request("info")
    assert info["deadlines"] == {
        "progress_s": 10.0, "prepared_s": 5.0, "commit_s": 5.0, "status_s": 3.0,
        "handover_s": 5.0, "ipc_s": 5.0,
        "keepalive": {"idle_s": 5, "interval_s": 2, "probes": 3}}
