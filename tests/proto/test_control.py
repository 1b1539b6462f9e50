"""The control protocol's client side (proto/control.py) over a scripted
stream: requests and their answers, pushes, errors, and the pool of kept
connections.

    client -> node   {t: req, id: N, op: NAME, args: {...}}
    node -> client   {t: push, id: N, kind, data}*  then  {t: resp, id: N, ok, result | error}
"""
import pytest
import trio

from jmig.proto import control
from jmig.proto.control import ControlClient, ControlPool, RemoteError


class Script:
    """A FramedStream stand-in: receive() hands out the frames given, in
    order; send() records; aclose() counts (and fails with `close_error`)."""

    def __init__(self, *frames, peer="b:7000", close_error=None):
        self.frames = list(frames)
        self.sent = []
        self.closed = 0
        self.peer = peer
        self.close_error = close_error

    async def send(self, obj):
        self.sent.append(obj)

    async def receive(self):
        if not self.frames:
            raise trio.BrokenResourceError("no more frames")
        f = self.frames.pop(0)
        if isinstance(f, BaseException):
            raise f
        return f

    async def aclose(self):
        await trio.sleep(0)              # a real stream's close waits too
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error


def resp(rid, result=None, **kw):
    return {"t": "resp", "id": rid, "ok": True, "result": result, **kw}


# -- one client ---------------------------------------------------------------------------

async def test_requests_are_numbered_from_1_and_return_their_result():
    fs = Script(resp(1, [1, 2]), resp(2, {"x": 1}))
    c = ControlClient(fs)
    assert await c.request("ps") == [1, 2]
    assert await c.request("kill", {"env": 4096}) == {"x": 1}
    assert fs.sent == [{"t": "req", "id": 1, "op": "ps", "args": {}},
                       {"t": "req", "id": 2, "op": "kill", "args": {"env": 4096}}]


async def test_frames_of_other_requests_are_passed_over():
    fs = Script(resp(7, "stale"), {"t": "push", "id": 9, "kind": "log", "data": 1},
                {"t": "other", "id": 1}, resp(1, "mine"))
    got = []
    assert await ControlClient(fs).request("ps", on_push=lambda k, d: got.append(k)) == "mine"
    assert got == []


async def test_pushes_reach_on_push_in_order_sync_or_async():
    frames = [{"t": "push", "id": 1, "kind": "log", "data": "a"},
              {"t": "push", "id": 1, "kind": "progress", "data": 50}, resp(1, "done")]
    got = []
    assert await ControlClient(Script(*frames)).request(
        "migrate", on_push=lambda k, d: got.append((k, d))) == "done"

    async def later(k, d):
        await trio.sleep(0)
        got.append(("async", k, d))

    assert await ControlClient(Script(*frames)).request("migrate", on_push=later) == "done"
    assert got == [("log", "a"), ("progress", 50), ("async", "log", "a"),
                   ("async", "progress", 50)]


async def test_pushes_without_a_listener_are_dropped():
    fs = Script({"t": "push", "id": 1, "kind": "log", "data": "a"}, resp(1, 3))
    assert await ControlClient(fs).request("ps") == 3


async def test_an_error_answer_raises_remote_error_with_its_code_and_message():
    fs = Script({"t": "resp", "id": 1, "ok": False,
                 "error": {"code": "no-such-env", "message": "no env 9"}})
    with pytest.raises(RemoteError) as e:
        await ControlClient(fs).request("kill", {"env": 9})
    assert (e.value.code, e.value.message, str(e.value)) == ("no-such-env", "no env 9", "no env 9")


async def test_an_error_answer_without_details_is_a_plain_failure():
    with pytest.raises(RemoteError) as e:
        await ControlClient(Script({"t": "resp", "id": 1, "ok": False})).request("ps")
    assert (e.value.code, e.value.message) == ("failed", "")


async def test_the_client_names_its_server_and_closes_its_stream():
    fs = Script(peer="node-b:7000")
    async with ControlClient(fs) as c:
        assert c.server == "node-b:7000"
    assert fs.closed == 1


async def test_open_connects_to_the_control_port_p_plus_3(monkeypatch):
    calls = []

    async def connect(host, port, secret, kind, name, timeout):
        calls.append((host, port, secret, kind, name, timeout))
        return Script()

    monkeypatch.setattr(control, "connect", connect)
    await ControlClient.open("10.0.0.2:7000", b"s", timeout=2.5, name="a")
    await ControlClient.open("10.0.0.2:7000", b"s")
    assert calls == [("10.0.0.2", 7003, b"s", "control", "a", 2.5),
                     ("10.0.0.2", 7003, b"s", "control", "jmigctl", 10.0)]


# -- the pool -----------------------------------------------------------------------------

class Opener:
    """Opens ControlClients over the scripts given for each address, in turn."""

    def __init__(self, **scripts):
        self.scripts = {a.replace("_", ":"): list(s) for a, s in scripts.items()}
        self.opened = []

    async def __call__(self, addr, timeout):
        self.opened.append(addr)
        return ControlClient(self.scripts[addr].pop(0))


async def test_the_pool_keeps_one_connection_per_node():
    first = Script(resp(1, "a"), resp(2, "b"))
    opener = Opener(n_1=[first], n_2=[Script(resp(1, "c"))])
    pool = ControlPool(opener)
    assert await pool.call("n:1", "ps", None, 5) == "a"
    assert await pool.call("n:1", "ps", None, 5) == "b"
    assert await pool.call("n:2", "ps", None, 5) == "c"
    assert opener.opened == ["n:1", "n:2"]
    await pool.close_all()
    assert first.closed == 1 and pool.clients == {}


async def test_an_error_answer_keeps_the_connection():
    fs = Script({"t": "resp", "id": 1, "ok": False, "error": {"code": "x", "message": "m"}},
                resp(2, "ok"))
    opener = Opener(n_1=[fs])
    pool = ControlPool(opener)
    with pytest.raises(RemoteError):
        await pool.call("n:1", "ps", None, 5)
    assert await pool.call("n:1", "ps", None, 5) == "ok"
    assert opener.opened == ["n:1"] and fs.closed == 0


@pytest.mark.parametrize("close_error", [None, OSError("reset"), trio.BrokenResourceError(),
                                         trio.ClosedResourceError()])
async def test_a_broken_connection_is_closed_and_the_next_call_reconnects(close_error):
    broken = Script(trio.BrokenResourceError("gone"), close_error=close_error)
    opener = Opener(n_1=[broken, Script(resp(1, "again"))])
    pool = ControlPool(opener)
    with pytest.raises(trio.BrokenResourceError, match="gone"):
        await pool.call("n:1", "ps", None, 5)
    assert broken.closed == 1 and "n:1" not in pool.clients
    assert await pool.call("n:1", "ps", None, 5) == "again"
    assert opener.opened == ["n:1", "n:1"]


async def test_a_call_past_its_timeout_fails_and_drops_the_connection():
    class Silent(Script):
        async def receive(self):
            await trio.sleep_forever()

    silent = Silent()
    pool = ControlPool(Opener(n_1=[silent]))
    with pytest.raises(trio.TooSlowError):
        await pool.call("n:1", "ps", None, 0.05)
    assert silent.closed == 1 and pool.clients == {}


async def test_one_request_at_a_time_per_node():
    order = []

    class Slow(Script):
        async def receive(self):
            order.append(("receive", self.sent[-1]["id"]))
            await trio.sleep(0.01)
            return resp(self.sent[-1]["id"], self.sent[-1]["id"])

    pool = ControlPool(Opener(n_1=[Slow()]))
    results = []

    async def call():
        results.append(await pool.call("n:1", "ps", None, 5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        nursery.start_soon(call)
    assert sorted(results) == [1, 2] and order == [("receive", 1), ("receive", 2)]


async def test_a_connection_is_closed_even_by_a_cancelled_caller():
    # A caller whose own deadline passed still closes what it drops.
    a = Script(resp(1, 1))
    pool = ControlPool(Opener(n_1=[a]))
    await pool.call("n:1", "ps", None, 5)
    with trio.CancelScope() as cs:
        cs.cancel()
        await pool.forget("n:1")
    assert a.closed == 1


async def test_forget_closes_the_nodes_connection_only():
    a, b = Script(resp(1, 1)), Script(resp(1, 2))
    pool = ControlPool(Opener(n_1=[a], n_2=[b]))
    await pool.call("n:1", "ps", None, 5)
    await pool.call("n:2", "ps", None, 5)
    await pool.forget("n:1")
    await pool.forget("n:3")
    assert (a.closed, b.closed) == (1, 0) and list(pool.clients) == ["n:2"]
