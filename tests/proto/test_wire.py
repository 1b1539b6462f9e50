"""The trio side of the wire (proto/wire.py): node addresses, raw byte
streams between frames (a migration's process stream), byte counts, and
connect's patience with a busy node."""
import socket

import pytest
import trio

from jmig.proto import wire
from jmig.proto.frames import DATA
from jmig.proto.handshake import AuthError
from jmig.proto.wire import (ClosedMidFrame, ConnectionClosed, FramedStream, advance, byte_views,
                             connect, parse_node, server_handshake)

SECRET = b"s" * 32


# -- node addresses -------------------------------------------------------------------------

@pytest.mark.parametrize("addr, want", [("127.0.0.1:50001", ("127.0.0.1", 50001)),
                                        ("node-b:1", ("node-b", 1)),
                                        ("h:65532", ("h", 65532)),
                                        ("[::1]:7000", ("::1", 7000))])
def test_a_node_is_named_host_colon_port(addr, want):
    assert parse_node(addr) == want


@pytest.mark.parametrize("addr", ["h:0", "h:65533", "h:70000", "h:", ":7000", "h", "h:7o",
                                  "h:-1", ""])
def test_a_bad_node_address_is_refused_with_an_example(addr):
    # The node's ports are P..P+3: P may be at most 65532.
    with pytest.raises(ValueError, match="use HOST:PORT, e.g. 127.0.0.1:50001"):
        parse_node(addr)


# -- buffers ----------------------------------------------------------------------------

def test_byte_views_address_every_buffer_by_byte():
    ints = memoryview(bytearray(8)).cast("I")
    views = byte_views([b"ab", bytearray(b"cd"), ints, memoryview(b"ef")])
    assert [v.format for v in views] == ["B"] * 4
    assert [len(v) for v in views] == [2, 2, 8, 2]
    mine = memoryview(b"xyz")
    assert byte_views([mine])[0] is mine


@pytest.mark.parametrize("n, left", [(0, [b"abc", b"de", b"f"]), (1, [b"bc", b"de", b"f"]),
                                     (3, [b"de", b"f"]), (4, [b"e", b"f"]), (5, [b"f"]),
                                     (6, [])])
def test_advance_drops_the_first_n_bytes(n, left):
    views = byte_views([b"abc", b"de", b"f"])
    advance(views, n)
    assert [bytes(v) for v in views] == left


# -- raw streams --------------------------------------------------------------------------

def pair(buf=None):
    a, b = trio.socket.socketpair()
    if buf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)
    return FramedStream(trio.SocketStream(a), DATA), FramedStream(trio.SocketStream(b), DATA)


async def read_all(fs: FramedStream, n: int) -> bytes:
    out = bytearray(fs.take_buffered())
    while len(out) < n:
        out += await fs.receive_some()
    return bytes(out)


async def test_raw_parts_follow_a_frame_in_order_and_are_counted():
    tx, rx = pair(4096)
    parts = [bytes([i % 251]) * (100 + i % 7) for i in range(1500)]      # more than IOV_MAX buffers
    total = sum(map(len, parts))
    got = []
    async with trio.open_nursery() as n:
        async def send():
            await tx.send({"t": "begin"})
            await tx.send_parts(parts)

        n.start_soon(send)
        assert await rx.receive() == {"t": "begin"}
        got.append(await read_all(rx, total))
    assert got[0] == b"".join(parts)
    assert tx.bytes_sent == rx.bytes_received == total + len(wire.encode_frame({"t": "begin"}))


async def test_receive_into_fills_the_buffers_in_order():
    tx, rx = pair()
    await tx.send_parts([b"0123456789"])
    bufs = [bytearray(4), bytearray(6)]
    assert await rx.receive_into([memoryview(b) for b in bufs]) == 10
    assert bufs == [bytearray(b"0123"), bytearray(b"456789")] and rx.bytes_received == 10


async def test_the_end_of_a_raw_stream_is_connection_closed():
    tx, rx = pair()
    await tx.send_parts([b"ab"])
    await tx.aclose()
    assert await read_all(rx, 2) == b"ab"
    with pytest.raises(ConnectionClosed, match="closed by peer"):
        await rx.receive_some()
    tx2, rx2 = pair()
    await tx2.aclose()
    with pytest.raises(ConnectionClosed, match="closed by peer"):
        await rx2.receive_into([memoryview(bytearray(4))])


async def test_a_connection_closed_inside_a_frame_is_both_lost_and_a_protocol_error():
    tx, rx = pair()
    frame = wire.encode_frame({"t": "x", "b": bytes(100)})
    await tx.stream.send_all(frame[:50])
    await tx.aclose()
    with pytest.raises(ClosedMidFrame, match="in the middle of a frame"):
        await rx.receive()
    tx, rx = pair()
    await tx.aclose()
    with pytest.raises(ConnectionClosed, match="closed by peer") as e:
        await rx.receive()
    assert not isinstance(e.value, ClosedMidFrame)


async def test_sending_on_a_closed_stream_is_connection_closed():
    tx, rx = pair()
    await tx.aclose()
    with pytest.raises(ConnectionClosed):
        await tx.send({"t": "x"})
    with pytest.raises(ConnectionClosed):
        await tx.send_parts([b"x"])


# -- connect -------------------------------------------------------------------------------

async def serve(nursery, answers):
    """A listener that, per connection, takes the next of `answers`: "busy"
    (refuse as busy), "close" (close at once), "ok" (authenticate)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen = []

    async def handle(stream):
        what = answers.pop(0) if answers else "ok"
        seen.append(what)
        fs = FramedStream(stream)
        if what == "close":
            await stream.aclose()
            return
        if what == "busy":
            await fs.receive()
            await fs.send({"t": "error", "code": "busy", "message": "too many peers"})
            await stream.aclose()
            return
        await server_handshake(fs, SECRET, "control", "srv")
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return port, seen


async def test_connect_tries_a_busy_or_silent_node_again_until_it_answers():
    async with trio.open_nursery() as n:
        port, seen = await serve(n, ["busy", "close", "busy"])
        fs = await connect("127.0.0.1", port, SECRET, "control", "cli", timeout=10)
        assert fs.peer == "srv" and seen == ["busy", "close", "busy", "ok"]
        n.cancel_scope.cancel()


def busy_node(monkeypatch, tries: list, busy: int):
    """trio.open_tcp_stream to a node (in memory) that answers "busy" to the
    first `busy` connections and says nothing to the rest."""
    async def open_tcp_stream(host, port, local_address=None):
        client, server = trio.testing.memory_stream_pair()
        tries.append(trio.current_time())
        if len(tries) <= busy:
            await FramedStream(server).send({"t": "error", "code": "busy", "message": "later"})
        return client

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)


async def test_connect_gives_up_on_a_node_busy_past_the_timeout(monkeypatch, autojump_clock):
    # Pauses of 20 ms doubling up to 0.5 s (the random factor pinned to 1):
    # tries at 0, .02, .06, .14, .30, .62, 1.12, 1.62, 2.12, 2.62 s; the next
    # would start past the 3 s timeout, so connect gives up, saying busy.
    tries: list = []
    busy_node(monkeypatch, tries, busy=100)
    monkeypatch.setattr(wire.random, "random", lambda: 0.5)
    t0 = trio.current_time()
    with pytest.raises(AuthError) as e:
        await connect("h", 7000, SECRET, "control", "cli", timeout=3)
    assert e.value.code == "busy"
    assert [round(t - t0, 2) for t in tries] == [0, .02, .06, .14, .3, .62, 1.12, 1.62, 2.12, 2.62]
    assert trio.current_time() - t0 == pytest.approx(2.62)


async def test_connect_does_not_retry_a_wrong_secret():
    async with trio.open_nursery() as n:
        port, seen = await serve(n, [])
        with pytest.raises(AuthError) as e:
            await connect("127.0.0.1", port, b"t" * 32, "control", "cli", timeout=10)
        assert e.value.code != "busy" and seen == ["ok"]
        n.cancel_scope.cancel()


async def test_send_now_is_refused_while_a_task_is_sending():
    # Writing then would put its bytes inside the other task's frame, even
    # with room in the socket.
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    gate = trio.Event()

    class Slow(trio.abc.SendStream):
        socket = a

        async def send_all(self, data):
            await gate.wait()

        async def wait_send_all_might_not_block(self):
            pass

        async def aclose(self):
            pass

    tx = FramedStream(Slow(), DATA)
    async with trio.open_nursery() as n:
        n.start_soon(tx.send, {"t": "first"})
        await trio.sleep(0.01)              # the task holds the stream, waiting
        assert tx.send_now({"t": "second"}) is False
        with pytest.raises(BlockingIOError):
            b.recv(100)                    # nothing was written
        gate.set()
    a.close()
    b.close()


async def test_connect_and_the_handshake_wait_10_and_3_seconds_by_default(monkeypatch,
                                                                         autojump_clock):
    # A node that accepts but never answers: the client gives up after 10 s;
    # a client that never speaks: the node after 3 s.
    async def open_tcp_stream(host, port, local_address=None):
        client, server = trio.testing.memory_stream_pair()
        return client

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await connect("h", 7000, SECRET, "control", "cli")
    assert trio.current_time() - t0 == 10
    client, server = trio.testing.memory_stream_pair()
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await server_handshake(FramedStream(server), SECRET, "control", "srv")
    assert trio.current_time() - t0 == 3


async def test_closing_a_stream_that_hangs_takes_one_second(autojump_clock):
    class Hung(trio.abc.Stream):
        async def aclose(self):
            await trio.sleep_forever()

        async def send_all(self, data):
            pass

        async def wait_send_all_might_not_block(self):
            pass

        async def receive_some(self, max_bytes=None):
            await trio.sleep_forever()

    t0 = trio.current_time()
    await FramedStream(Hung()).aclose()
    assert trio.current_time() - t0 == 1


async def test_connect_keeps_to_its_timeout_after_a_busy_answer(monkeypatch, autojump_clock):
    # The node answers "busy", then accepts but never says a word: connect
    # gives up at its timeout, not a second later.
    tries: list = []
    busy_node(monkeypatch, tries, busy=1)
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await connect("h", 7000, SECRET, "control", "cli", timeout=0.3)
    assert len(tries) == 2 and trio.current_time() - t0 <= 0.3 + 1e-9


async def test_send_now_on_a_full_socket_is_refused_and_sends_nothing():
    import os

    tx, rx = pair(4096)
    fd = tx.stream.socket.fileno()
    with pytest.raises(BlockingIOError):
        while True:
            os.write(fd, b"x" * 4096)       # fill the socket, bypassing the stream
    assert tx.send_now({"t": "get", "vpn": 1}) is False
    assert tx.bytes_sent == 0 and not tx.unsent


async def test_after_the_handshake_each_side_of_a_control_port_reads_its_own_limits():
    # jmigctl's requests may carry strings of 64 KiB at most; the node's
    # replies, 8 MiB (console text, a vmmap).
    left, right = trio.testing.memory_stream_pair()
    cfs, sfs = FramedStream(left), FramedStream(right)
    async with trio.open_nursery() as n:
        n.start_soon(server_handshake, sfs, SECRET, "control", "srv")
        await wire.client_handshake(cfs, SECRET, "control", "cli")
    async with trio.open_nursery() as n:
        n.start_soon(sfs.send, {"t": "resp", "text": "x" * (1 << 20)})
        assert len((await cfs.receive())["text"]) == 1 << 20
    async with trio.open_nursery() as n:
        n.start_soon(cfs.send, {"t": "req", "text": "x" * (64 << 10)})
        assert len((await sfs.receive())["text"]) == 64 << 10
    async with trio.open_nursery() as n:
        n.start_soon(cfs.send, {"t": "req", "text": "x" * ((64 << 10) + 1)})
        with pytest.raises(wire.RemoteProtocolError, match="not valid msgpack"):
            await sfs.receive()


def closing_node(monkeypatch, tries: list, first: bytes = b""):
    """trio.open_tcp_stream to a node (in memory) that sends `first` and
    closes every connection."""
    async def open_tcp_stream(host, port, local_address=None):
        client, server = trio.testing.memory_stream_pair()
        tries.append(trio.current_time())
        if first:
            await server.send_all(first)
            await server.send_eof()          # it still reads the hello
        else:
            await server.aclose()
        return client

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)


async def test_a_node_that_closes_before_a_word_is_tried_until_the_timeout(monkeypatch,
                                                                          autojump_clock):
    tries: list = []
    closing_node(monkeypatch, tries)
    monkeypatch.setattr(wire.random, "random", lambda: 0.5)
    t0 = trio.current_time()
    with pytest.raises(ConnectionClosed):
        await connect("h", 7000, SECRET, "control", "cli", timeout=1)
    assert [round(t - t0, 2) for t in tries] == [0, .02, .06, .14, .3, .62]


async def test_a_node_that_closes_in_the_middle_of_a_frame_is_not_tried_again(monkeypatch,
                                                                             autojump_clock):
    tries: list = []
    closing_node(monkeypatch, tries, first=b"\x00\x00")
    with pytest.raises(ClosedMidFrame):
        await connect("h", 7000, SECRET, "control", "cli", timeout=10)
    assert len(tries) == 1


async def test_a_pause_that_ends_past_the_timeout_ends_connect_as_too_slow(monkeypatch,
                                                                          autojump_clock):
    # Pauses of 1.5 x 20, 40, 80 ms (the random factor pinned near its top):
    # the third ends at 0.21 s, past the 0.2 s timeout: the fourth try is
    # cut at once, and connect times out.
    tries: list = []
    busy_node(monkeypatch, tries, busy=100)
    monkeypatch.setattr(wire.random, "random", lambda: 0.999)
    with pytest.raises(trio.TooSlowError):
        await connect("h", 7000, SECRET, "control", "cli", timeout=0.2)
    assert len(tries) == 4


async def test_closing_in_a_cancelled_scope_closes_and_lets_the_next_close_run():
    # A cancelled task's cleanup (the pager's: close faults, then push) must
    # close every connection, not stop at the first.
    (a1, _), (a2, _) = pair(), pair()
    with trio.CancelScope() as cs:
        cs.cancel()
        await a1.aclose()
        await a2.aclose()
    assert a1.stream.socket.fileno() == -1 and a2.stream.socket.fileno() == -1
