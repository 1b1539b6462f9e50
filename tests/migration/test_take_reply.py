"""The destination's kernel task taking a fault's reply itself (Pager.take_reply):
a real kernel whose env has every page remote, and a real faults connection
(a socket pair) on which the test plays the origin."""
import math
import time
import types

import pytest
import trio

from jmig.node.migration import pager as pager_module
from jmig.node.migration.link import Link
from jmig.node.migration.pager import Incoming, Pager
from jmig.proto import migration as m
from jmig.proto.frames import DATA
from jmig.proto.pstream import StreamError, decode_pages, encode_pages
from jmig.proto.wire import FramedStream

from ..kernel.test_kernel_ops import arrived_remote, counting


async def pager_with_link():
    mach, p = counting()
    e, pages = arrived_remote(mach, p.envid)
    k, envid = mach.k, e.env_id
    pokes = []
    pager = Pager(types.SimpleNamespace(kernel=k, poke=lambda: pokes.append(1)))
    a, b = trio.socket.socketpair()
    origin = FramedStream(trio.SocketStream(b), DATA)
    inc = Incoming(mid="m1", envid=envid, origin="o", addr=("127.0.0.1", 1), token=b"t" * 16,
                   prefetch=0)
    inc.requests, inc.requests_recv = trio.open_memory_channel(math.inf)
    inc.faults = Link(FramedStream(trio.SocketStream(a), DATA))
    inc.state = "active"
    inc.remote = len(pages)
    pager.by_env[envid] = inc
    return pager, inc, origin, k, envid, pages, pokes


@pytest.fixture(autouse=True)
def patient_wait(monkeypatch):
    """The kernel task polls for a reply only until REPLY_WAIT (2 ms) after
    the fault; on a loaded test machine more than that can pass between a
    test's fault and its poll.  How long to wait is a tuning, not what
    these tests are about: they wait 250 ms."""
    monkeypatch.setattr(pager_module, "REPLY_WAIT", 0.25)


def fault(inc, va):
    inc.pending[va >> 12] = time.perf_counter()


async def test_a_reply_already_on_the_socket_is_installed_by_the_kernel_task():
    pager, inc, origin, k, envid, pages, pokes = await pager_with_link()
    assert pager.take_reply() is False                 # nothing waited for
    va, perm, data = pages[0]
    fault(inc, va)
    await origin.send(m.encode(m.PageBatch(encode_pages([(va, perm, data)]), False)))
    assert pager.take_reply() is True
    assert bytes(k.page_data(envid, va)) == data
    assert k.remote_count(envid) == len(pages) - 1
    assert not inc.pending and inc.fetched == 1 and len(inc.latencies) == 1 and pokes


async def test_the_first_faults_are_taken_before_the_link_task_has_seen_the_go():
    # The env runs as soon as the go arrives; its link task sets "active" a
    # task switch later, with the event loop busy finishing the migration.
    pager, inc, origin, k, envid, pages, _ = await pager_with_link()
    inc.state = "connecting"
    va, perm, data = pages[0]
    fault(inc, va)
    await origin.send(m.encode(m.PageBatch(encode_pages([(va, perm, data)]), False)))
    assert pager.take_reply() is True
    assert bytes(k.page_data(envid, va)) == data and not inc.pending


async def test_no_reply_within_the_wait_leaves_the_fault_to_the_event_loop():
    pager, inc, origin, k, envid, pages, _ = await pager_with_link()
    va = pages[0][0]
    fault(inc, va)
    assert pager.take_reply() is False
    assert k.remote_count(envid) == len(pages) and inc.pending


async def test_a_fault_asked_long_ago_is_not_polled_for_again():
    pager, inc, origin, k, envid, pages, _ = await pager_with_link()
    va, perm, data = pages[0]
    inc.pending[va >> 12] = time.perf_counter() - 1.0  # its wait is over
    await origin.send(m.encode(m.PageBatch(encode_pages([(va, perm, data)]), False)))
    assert pager.take_reply() is False                 # fault_reader takes it
    assert k.remote_count(envid) == len(pages)


async def test_anything_but_a_good_page_batch_is_given_back_to_the_link_untouched():
    pager, inc, origin, k, envid, pages, _ = await pager_with_link()
    va, perm, data = pages[0]
    # A batch whose records are malformed: nothing installed, the node goes
    # on, and the link's reader gets the same frame (and reports it).
    fault(inc, va)
    await origin.send({"t": "page-batch", "b": b"\x01\x02\x03", "push": False})
    assert pager.take_reply() is False
    msg = await inc.faults.receive(frozenset({m.PageBatch}))
    with pytest.raises(StreamError):
        decode_pages(msg.b)
    # Released (an answer to a Release, not a page): given back as it came.
    fault(inc, va)
    await origin.send(m.encode(m.Released()))
    assert pager.take_reply() is False
    assert isinstance(await inc.faults.receive(frozenset({m.Released})), m.Released)
    assert k.remote_count(envid) == len(pages)
    # The page itself afterwards is taken as usual.
    fault(inc, va)
    await origin.send(m.encode(m.PageBatch(encode_pages([(va, perm, data)]), False)))
    assert pager.take_reply() is True and bytes(k.page_data(envid, va)) == data


async def test_the_last_remote_page_wakes_the_asker_to_release_the_origin():
    pager, inc, origin, k, envid, pages, _ = await pager_with_link()
    for va, perm, data in pages:
        fault(inc, va)
        await origin.send(m.encode(m.PageBatch(encode_pages([(va, perm, data)]), False)))
        assert pager.take_reply() is True
    assert k.remote_count(envid) == 0 and inc.all_in.is_set()
    assert inc.requests_recv.receive_nowait() is None  # the asker's cue to send Release
