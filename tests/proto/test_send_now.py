"""FramedStream.send_now: a frame sent from synchronous code keeps the
stream intact even when the socket takes only part of it."""
import socket

import pytest
import trio

from jmig.proto.frames import DATA, RemoteProtocolError, encode_frame
from jmig.proto.wire import ConnectionClosed, FramedStream

from .test_wire import read_all


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


# -- receive_now and send_blocking: a fault's round trip outside the event loop ------------

async def test_receive_now_takes_only_whole_frames_and_never_waits():
    tx, rx = await _pair()
    assert rx.receive_now() is None                    # nothing there: no wait
    await tx.send({"t": "get", "vpn": 1})
    await tx.send({"t": "get", "vpn": 2})
    assert rx.receive_now()["vpn"] == 1
    assert rx.receive_now()["vpn"] == 2
    frame = encode_frame({"t": "get", "vpn": 3})
    await tx.send_raw(frame[:7])
    assert rx.receive_now() is None                    # half a frame stays buffered
    await tx.send_raw(frame[7:])
    with trio.fail_after(5):
        assert (await rx.receive())["vpn"] == 3


async def test_a_frame_given_back_is_the_next_one_received():
    tx, rx = await _pair()
    await tx.send({"t": "released"})
    await tx.send({"t": "after"})
    frame = rx.receive_now()
    rx.unread(frame)
    assert rx.receive_now() is None                    # nothing overtakes it
    assert await rx.receive() == {"t": "released"}
    assert (await rx.receive())["t"] == "after"


async def test_receive_now_leaves_the_end_of_the_stream_to_receive():
    tx, rx = await _pair()
    await tx.send({"t": "last"})
    await tx.stream.aclose()
    assert rx.receive_now() == {"t": "last"}
    assert rx.receive_now() is None
    with pytest.raises(ConnectionClosed):
        await rx.receive()


async def test_a_malformed_frame_fails_receive_now_and_then_receive_alike():
    tx, rx = await _pair()
    await tx.send_raw(b"\x00\x00\x00\x01\x01")          # a body that is no map
    with pytest.raises(RemoteProtocolError):
        rx.receive_now()
    with pytest.raises(RemoteProtocolError):
        await rx.receive()


async def test_send_blocking_from_a_thread_sends_frames_whole_and_in_order():
    tx, rx = await _pair()
    big = bytes(range(256)) * 2000                     # far more than the buffers hold
    got = []

    async def reader():
        for _ in range(3):
            got.append(await rx.receive())

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        sent = await trio.to_thread.run_sync(
            lambda: [tx.send_blocking({"t": "page", "b": big, "i": i}, 5.0) for i in range(3)])
    assert sent == [True, True, True] and not tx.unsent
    assert [(g["i"], g["b"] == big) for g in got] == [(0, True), (1, True), (2, True)]


async def test_send_blocking_on_a_stalled_link_gives_up_and_leaves_the_rest_for_the_loop():
    tx, rx = await _pair()
    big = bytes(range(256)) * 2000
    ok = await trio.to_thread.run_sync(tx.send_blocking, {"t": "page", "b": big}, 0.05)
    assert ok is False and tx.unsent                   # nobody read: it stopped waiting
    async with trio.open_nursery() as n:
        async def reader():
            got.append(await rx.receive())
            got.append(await rx.receive())
        got = []
        n.start_soon(reader)
        await tx.send({"t": "after"})                  # the loop sends the rest first
    assert got[0]["b"] == big and got[1]["t"] == "after"


async def test_send_blocking_to_a_peer_that_is_gone_says_so_and_raises_nothing():
    tx, rx = await _pair()
    rx.stream.socket.close()
    ok = await trio.to_thread.run_sync(tx.send_blocking, {"t": "page", "b": b"x" * 100}, 5.0)
    assert ok is False and tx.unsent                   # the loop's next send reports it
    with pytest.raises(ConnectionClosed):
        await tx.send({"t": "after"})


async def test_raw_parts_after_a_partial_send_now_follow_the_rest_of_its_frame():
    tx, rx = await _pair()
    big = b"y" * 600_000
    assert tx.send_now({"t": "big", "b": big}) and tx.unsent
    got = []

    async def reader():
        got.append(await rx.receive())
        got.append(await read_all(rx, 5))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await tx.send_parts([b"ab", b"cde"])
    assert got[0]["b"] == big and got[1] == b"abcde"
