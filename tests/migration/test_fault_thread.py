"""The origin's faults connection served from a thread of its own
(PageServer._faults): a real kernel holding the env SERVING, a real socket
pair, the test playing the destination with a blocking socket."""
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import structlog
import trio

from jmig.node.migration.base import Hold
from jmig.node.migration.link import Link
from jmig.node.migration.origin import Outgoing, PageServer, runs_of
from jmig.proto import migration as m
from jmig.proto.frames import DATA, NEED_DATA, FrameDecoder, encode_frame
from jmig.proto.pstream import decode_pages
from jmig.proto.wire import FramedStream

from ..kernel.test_kernel_ops import counting


def serving():
    """A page server whose node holds a paused env SERVING, and the
    Outgoing of its migration."""
    mach, p = counting()
    k = mach.k
    k.pause(p.envid)
    pages = [(x.va, x.perm, bytes(k.page_data(p.envid, x.va))) for x in k.env_pages(p.envid)]
    node = types.SimpleNamespace(kernel=k, log=structlog.get_logger(),
                                 dispatch_events=k.take_events,
                                 tracer=types.SimpleNamespace(migration=lambda: None))
    server = PageServer(node)
    out = Outgoing(mid="m1", envid=p.envid, dest="d", dest_addr=("127.0.0.1", 1),
                   token=b"t" * 16, push=False, prefetch=0,
                   runs=runs_of([(va >> 12, perm) for va, perm, _ in pages]))
    server.expect(out)
    server.serve(out.mid)
    assert k.get_env(p.envid).frozen == Hold.SERVING
    return server, out, k, pages


def read_frame(sock: socket.socket, decoder: FrameDecoder, timeout: float = 5.0):
    sock.settimeout(timeout)
    while (frame := decoder.next_frame()) is NEED_DATA:
        data = sock.recv(1 << 16)
        assert data, "the origin closed the connection"
        decoder.receive_data(data)
    return frame


async def test_faults_are_answered_while_the_event_loop_is_busy_and_a_release_goes_back_to_it():
    server, out, k, pages = serving()
    a, b = socket.socketpair()
    link = Link(FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), DATA))
    dest, decoder = b, FrameDecoder(DATA)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._faults, link, out)
        await trio.sleep(0.05)                             # the thread is up
        for va, perm, data in pages[:3]:
            dest.sendall(encode_frame(m.encode(m.Get(va >> 12, 0))))
            # The event loop is stuck in this task: only the thread can answer.
            time.sleep(0.05)
            dest.setblocking(False)
            try:
                got = dest.recv(1 << 16)
            except BlockingIOError:
                got = b""
            dest.setblocking(True)
            assert got, "no reply while the event loop was busy"
            decoder.receive_data(got)
            reply = m.decode(read_frame(dest, decoder), frozenset({m.PageBatch}))
            assert [(p.va, p.data) for p in decode_pages(reply.b)] == [(va, data)]
        assert server.totals["pages_served"] == 3 and out.sent == {va >> 12 for va, _, _ in
                                                                   pages[:3]}
        # A Release is not the thread's: the event loop releases the env.
        dest.sendall(encode_frame(m.encode(m.Release())))
        with trio.fail_after(5):
            while k.live_env(out.envid) is not None:
                await trio.sleep(0.01)
        assert isinstance(m.decode(await trio.to_thread.run_sync(read_frame, dest, decoder),
                                   frozenset({m.Released})), m.Released)
    assert server.fault_threads == 0 and out.mid not in server.outgoing


async def test_cancelling_the_connection_stops_its_thread():
    server, out, k, pages = serving()
    a, b = socket.socketpair()
    link = Link(FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), DATA))
    with trio.move_on_after(0.2):
        await server._faults(link, out)                    # waits in its thread, unasked
    assert server.fault_threads == 0
    # The socket is the event loop's again: a Get is answered there.
    va, perm, data = pages[0]
    b.sendall(encode_frame(m.encode(m.Get(va >> 12, 0))))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._faults, link, out)
        reply = await trio.to_thread.run_sync(read_frame, b, FrameDecoder(DATA))
        nursery.cancel_scope.cancel()
    assert [p.data for p in decode_pages(m.decode(reply, frozenset({m.PageBatch})).b)] == [data]
    assert k.get_env(out.envid).frozen == Hold.SERVING     # untouched: still served


async def test_a_half_frame_or_the_end_goes_back_to_the_loop_which_reports_the_end():
    server, out, k, pages = serving()
    a, b = socket.socketpair()
    link = Link(FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), DATA))
    va = pages[1][0]
    frame = encode_frame(m.encode(m.Get(va >> 12, 0)))
    async with trio.open_nursery() as nursery:
        async def serve():
            try:
                await server._faults(link, out)
            except Exception as exc:                       # the link's end, reported
                ended.append(exc)
        ended = []
        nursery.start_soon(serve)
        await trio.sleep(0.05)
        b.sendall(frame[:5])                                # half a Get
        await trio.sleep(0.05)
        b.sendall(frame[5:])                                # ... completed
        reply = await trio.to_thread.run_sync(read_frame, b, FrameDecoder(DATA))
        assert decode_pages(m.decode(reply, frozenset({m.PageBatch})).b)[0].va == va
        b.close()
    assert ended and "lost the link" in str(ended[0])
    assert server.fault_threads == 0


def fifo_threads() -> list[int]:
    """The ids of this process's threads that run SCHED_FIFO."""
    return [int(t) for t in os.listdir("/proc/self/task")
            if os.sched_getscheduler(int(t)) == os.SCHED_FIFO]


def can_realtime() -> bool:
    """Whether this process may raise a thread to real-time priority."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] > 0


async def test_the_thread_serves_at_real_time_priority_and_leaves_it_when_done():
    if not can_realtime():
        pytest.skip("needs root or RLIMIT_RTPRIO to raise a thread's priority")
    server, out, k, pages = serving()
    a, b = socket.socketpair()
    link = Link(FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), DATA))
    assert fifo_threads() == []
    with trio.move_on_after(0.2):
        await server._faults(link, out)                    # waits in its thread, unasked
    # trio keeps its threads for the next job: the thread must not keep the priority.
    assert fifo_threads() == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._faults, link, out)
        await trio.sleep(0.05)
        serving_threads = fifo_threads()
        assert len(serving_threads) == 1 and serving_threads[0] != threading.get_native_id()
        assert server.stats()["fault_priority"] == "realtime"
        nursery.cancel_scope.cancel()
    assert fifo_threads() == []


def test_without_the_privilege_the_thread_serves_at_normal_priority():
    # A child that gave up root (setuid nobody: no CAP_SYS_NICE, and
    # RLIMIT_RTPRIO 0) runs the same block: it is told so and nothing changes.
    # (Everything is imported first: nobody may not read the interpreter's files.)
    code = ("import os, resource\n"
            "from jmig.node.migration.origin import realtime\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "if os.geteuid() == 0: os.setuid(65534)\n"
            "with realtime() as raised:\n"
            "    print(raised, os.sched_getscheduler(0) == os.SCHED_OTHER)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"]
