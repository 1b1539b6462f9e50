"""FramedStream.send_now: a frame sent from synchronous code keeps the
stream intact even when the socket takes only part of it."""
import socket

import trio

from jmig.proto.frames import DATA
from jmig.proto.wire import FramedStream


async def _pair():
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return FramedStream(trio.SocketStream(a), DATA), FramedStream(trio.SocketStream(b), DATA)


async def test_send_now_frames_arrive_whole_and_in_order():
    tx, rx = await _pair()
    assert tx.send_now({"t": "get", "vpn": 1})
    assert not tx.unsent
    await tx.send({"t": "get", "vpn": 2})
    assert (await rx.receive())["vpn"] == 1
    assert (await rx.receive())["vpn"] == 2


async def test_a_partial_send_now_is_completed_before_the_next_frame():
    tx, rx = await _pair()
    big = b"x" * 600_000                 # more than the socket buffers take at once
    got = []

    async def reader():
        for _ in range(3):
            got.append(await rx.receive())

    async with trio.open_nursery() as n:
        assert tx.send_now({"t": "big", "b": big})
        assert tx.unsent                  # the socket took only part of it
        assert not tx.send_now({"t": "small"})   # refused until the rest is out
        n.start_soon(reader)
        await tx.send({"t": "after"})     # flushes the rest first
        await tx.send_raw(b"")
        await tx.send({"t": "last"})
    assert [m["t"] for m in got] == ["big", "after", "last"]
    assert got[0]["b"] == big
