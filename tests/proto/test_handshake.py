"""The hello and mutual HMAC handshake (proto/handshake.py): the two state
machines driven message by message, then over trio memory streams.

    client -> server  hello      {proto, v, port, nonce}
    server -> client  challenge  {v, nonce}                 (no proof: nothing to guess against)
    client -> server  auth       {mac_client}               the connecting side proves first
    server -> client  welcome    {node, version, mac_server}    (or error)
"""
import pytest
import trio
import trio.testing

from jmig.proto.frames import NEED_DATA, FrameDecoder, encode_frame
from jmig.proto.handshake import (DONE, FAILED, NONCE_LEN, SENT_AUTH, SENT_CHALLENGE, VERSION,
                                  AuthError, ClientHandshake, ServerHandshake, _mac)
from jmig.proto.wire import FramedStream, client_handshake, server_handshake

SECRET = b"0123456789abcdef0123456789abcdef-cluster"
OTHER = b"fedcba9876543210fedcba9876543210-another"


def pair(kind="control", server_kind=None, csecret=SECRET, ssecret=SECRET):
    c = ClientHandshake(csecret, kind, "client-node")
    s = ServerHandshake(ssecret, server_kind or kind, "server-node", "0.1.0")
    return c, s


def run(c: ClientHandshake, s: ServerHandshake) -> list[dict]:
    """Play the handshake to its end; returns every message exchanged.
    Client-side failures propagate as AuthError."""
    msgs = [c.hello()]
    while True:
        reply = s.receive(msgs[-1])
        msgs.append(reply)
        out = c.receive(reply)
        if out is None:
            return msgs
        msgs.append(out)


# -- success -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "pgfault", "pager", "control"])
def test_a_shared_secret_authenticates_both_ways(kind):
    c, s = pair(kind)
    msgs = run(c, s)
    assert [m["t"] for m in msgs] == ["hello", "challenge", "auth", "welcome"]
    assert c.state == DONE and s.state == DONE
    assert s.error is None
    assert s.peer == "client-node"
    assert c.server == "server-node" and c.server_version == "0.1.0"


def test_every_session_uses_fresh_nonces():
    c1, s1 = pair()
    c2, s2 = pair()
    m1, m2 = run(c1, s1), run(c2, s2)
    assert m1[0]["nonce"] != m2[0]["nonce"] and len(m1[0]["nonce"]) == NONCE_LEN
    assert m1[1]["nonce"] != m2[1]["nonce"] and len(m1[1]["nonce"]) == NONCE_LEN
    assert m1[2]["mac"] != m2[2]["mac"]


# -- wrong secret ------------------------------------------------------------------

def test_the_challenge_carries_no_proof_an_unauthenticated_client_could_use():
    # A peer without the secret gets only a nonce: nothing derived from the
    # secret that it could test guesses against offline.
    c, s = pair(csecret=OTHER, ssecret=SECRET)
    challenge = s.receive(c.hello())
    assert set(challenge) == {"t", "v", "nonce"}


def test_a_client_without_the_secret_is_refused_before_the_server_proves_anything():
    c, s = pair(csecret=OTHER, ssecret=SECRET)
    challenge = s.receive(c.hello())
    auth = c.receive(challenge)
    reply = s.receive(auth)
    assert s.state == FAILED and s.error.code == "auth"
    assert reply["t"] == "error" and reply["code"] == "auth" and "mac" not in reply
    with pytest.raises(AuthError) as exc:
        c.receive(reply)
    assert exc.value.code == "auth" and c.state == FAILED


def test_client_detects_a_server_without_the_secret():
    # The node answers an auth only after checking it; a fake node (one
    # that does not check, and does not know the secret) gives a bad proof.
    c, s = pair(csecret=SECRET, ssecret=OTHER)
    hello = c.hello()
    challenge = s.receive(hello)
    s.state = SENT_CHALLENGE
    auth = c.receive(challenge)
    fake_welcome = {"t": "welcome", "node": "fake", "version": "0",
                    "mac": _mac(OTHER, b"jmig-server", "control", hello["nonce"],
                                challenge["nonce"])}
    with pytest.raises(AuthError) as exc:
        c.receive(fake_welcome)
    assert exc.value.code == "auth" and c.state == FAILED
    assert auth["t"] == "auth"


@pytest.mark.parametrize("welcome", [
    {"t": "welcome", "node": "x"},
    {"t": "welcome", "node": "x", "mac": "text"},
    {"t": "welcome", "node": "x", "mac": b"\0" * 32},
], ids=["no-mac", "str-mac", "zero-mac"])
def test_client_refuses_a_welcome_without_a_valid_proof(welcome):
    c, s = pair()
    c.receive(s.receive(c.hello()))
    with pytest.raises(AuthError) as exc:
        c.receive(welcome)
    assert exc.value.code == "auth" and c.state == FAILED


def test_server_learns_why_the_client_left():
    c, s = pair()
    s.receive(c.hello())
    reply = s.receive({"t": "error", "code": "version", "message": "bye"})
    assert s.state == FAILED and s.error.code == "version" and "bye" in s.error.message
    assert reply["t"] == "error"


def test_server_refuses_a_client_mac_made_with_another_secret():
    honest = ClientHandshake(SECRET, "control")
    s = ServerHandshake(SECRET, "control", "server")
    hello = honest.hello()
    challenge = s.receive(hello)
    forged = {"t": "auth", "mac": _mac(OTHER, b"jmig-client", "control",
                                       challenge["nonce"], hello["nonce"])}
    reply = s.receive(forged)
    assert s.state == FAILED and s.error.code == "auth"
    assert reply == {"t": "error", "code": "auth", "message": s.error.message}


# A proof that differs from the right one only in its tail (last byte
# flipped, second half zero), or is a prefix of it, or has a byte more.
NEAR_MISSES = {
    "last-byte": lambda mac: mac[:-1] + bytes([mac[-1] ^ 1]),
    "tail-zero": lambda mac: mac[:16] + bytes(16),
    "first-16-only": lambda mac: mac[:16],
    "one-byte-more": lambda mac: mac + b"\0",
}


@pytest.mark.parametrize("spoil", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_server_refuses_a_client_mac_that_is_almost_right(spoil):
    c, s = pair()
    good = c.receive(s.receive(c.hello()))["mac"]
    reply = s.receive({"t": "auth", "mac": spoil(good)})
    assert s.state == FAILED and s.error.code == "auth" and reply["code"] == "auth"
    assert "mac" not in reply


@pytest.mark.parametrize("spoil", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_client_refuses_a_server_mac_that_is_almost_right(spoil):
    c, s = pair()
    welcome = s.receive(c.receive(s.receive(c.hello())))
    assert welcome["t"] == "welcome"
    with pytest.raises(AuthError) as exc:
        c.receive(dict(welcome, mac=spoil(welcome["mac"])))
    assert exc.value.code == "auth" and c.state == FAILED and c.server == ""


def test_auth_with_a_garbage_mac_fails_with_auth():
    c, s = pair()
    s.receive(c.hello())
    reply = s.receive({"t": "auth", "mac": b"\0" * 32})
    assert s.error.code == "auth" and reply["code"] == "auth"


# -- version and port ----------------------------------------------------------------

def test_server_refuses_another_protocol_version():
    c, s = pair()
    hello = dict(c.hello(), v=VERSION + 1)
    reply = s.receive(hello)
    assert s.state == FAILED and s.error.code == "version"
    assert reply["t"] == "error" and reply["code"] == "version"
    with pytest.raises(AuthError) as exc:
        c.receive(reply)
    assert exc.value.code == "version"


def test_client_refuses_a_server_of_another_version():
    c, s = pair()
    challenge = dict(s.receive(c.hello()), v=VERSION + 1)
    with pytest.raises(AuthError) as exc:
        c.receive(challenge)
    assert exc.value.code == "version" and c.state == FAILED


@pytest.mark.parametrize("client_kind,server_kind", [
    ("control", "normal"), ("normal", "pgfault"), ("pgfault", "pager"), ("pager", "control")])
def test_server_refuses_a_hello_for_another_port(client_kind, server_kind):
    c, s = pair(client_kind, server_kind=server_kind)
    reply = s.receive(c.hello())
    assert s.state == FAILED and s.error.code == "port"
    assert reply["code"] == "port" and server_kind in reply["message"]
    with pytest.raises(AuthError) as exc:
        c.receive(reply)
    assert exc.value.code == "port"


def test_a_mac_for_one_port_does_not_open_another():
    # Even past the hello check, the port kind is bound into both MACs.
    c = ClientHandshake(SECRET, "normal")
    s = ServerHandshake(SECRET, "control", "server")
    hello = dict(c.hello(), port="control")            # lie about the port
    auth = c.receive(s.receive(hello))                 # the client's MAC is for "normal"
    reply = s.receive(auth)
    assert s.state == FAILED and s.error.code == "auth" and reply["code"] == "auth"


def test_client_rejects_an_unknown_port_kind():
    with pytest.raises(ValueError):
        ClientHandshake(SECRET, "telnet")


# -- replay --------------------------------------------------------------------------

def test_a_replayed_auth_from_another_session_fails():
    c1, s1 = pair()
    old = run(c1, s1)
    hello, auth = old[0], old[2]
    s2 = ServerHandshake(SECRET, "control", "server")
    challenge = s2.receive(hello)                      # the replayed hello is accepted...
    assert challenge["nonce"] != old[1]["nonce"]       # ...but the server's nonce is new
    reply = s2.receive(auth)
    assert s2.state == FAILED and s2.error.code == "auth"
    assert reply["t"] == "error"


def test_a_replayed_welcome_from_another_session_fails():
    c1, s1 = pair()
    old = run(c1, s1)
    c2, s2 = pair()
    c2.receive(s2.receive(c2.hello()))
    with pytest.raises(AuthError) as exc:
        c2.receive(old[3])                             # the MAC covers the old nonces
    assert exc.value.code == "auth"


# -- out of order ------------------------------------------------------------------

@pytest.mark.parametrize("msg", [
    {"t": "auth", "mac": b"\0" * 32},
    {"t": "welcome"},
    {"t": "req", "id": 1, "op": "ps"},
    {},
    {"t": "hello", "proto": "http", "v": VERSION, "port": "control", "nonce": b"\0" * 32},
    {"t": "hello", "proto": "jmig", "v": VERSION, "port": "control", "nonce": b"short"},
    {"t": "hello", "proto": "jmig", "v": VERSION, "port": "control", "nonce": "not bytes" * 4},
], ids=["auth-first", "welcome", "request", "empty", "other-proto", "short-nonce", "str-nonce"])
def test_server_refuses_anything_but_a_hello_first(msg):
    s = ServerHandshake(SECRET, "control", "server")
    reply = s.receive(msg)
    assert s.state == FAILED and s.error.code == "protocol"
    assert reply["t"] == "error" and reply["code"] == "protocol"


def test_server_refuses_a_second_hello():
    c, s = pair()
    hello = c.hello()
    s.receive(hello)
    assert s.state == SENT_CHALLENGE
    s.receive(hello)
    assert s.state == FAILED and s.error.code == "protocol"


def test_a_failed_server_accepts_nothing_more():
    c, s = pair()
    hello = c.hello()
    s.receive({"t": "nonsense"})
    assert s.state == FAILED
    reply = s.receive(hello)
    assert s.state == FAILED and reply["t"] == "error"


def test_server_refuses_messages_after_done():
    c, s = pair()
    run(c, s)
    reply = s.receive({"t": "auth", "mac": b"\0" * 32})
    assert s.state == FAILED and reply["t"] == "error"


def test_client_refuses_a_welcome_before_the_challenge():
    c, s = pair()
    c.hello()
    with pytest.raises(AuthError) as exc:
        c.receive({"t": "welcome", "node": "x"})
    assert exc.value.code == "protocol" and c.state == FAILED


def test_client_refuses_a_second_challenge():
    c, s = pair()
    challenge = s.receive(c.hello())
    assert c.receive(challenge)["t"] == "auth"
    assert c.state == SENT_AUTH
    with pytest.raises(AuthError):
        c.receive(challenge)
    assert c.state == FAILED


def test_client_refuses_a_challenge_before_its_hello():
    c, s = pair()
    other = ClientHandshake(SECRET, "control")
    challenge = s.receive(other.hello())
    with pytest.raises(AuthError):
        c.receive(challenge)


def test_a_failed_client_accepts_nothing_more():
    c, s = pair()
    hello = c.hello()
    challenge = s.receive(hello)
    with pytest.raises(AuthError):
        c.receive({"t": "bogus"})
    with pytest.raises(AuthError):
        c.receive(challenge)
    assert c.state == FAILED


@pytest.mark.parametrize("challenge", [
    {"t": "challenge", "v": VERSION, "nonce": b"\0" * 31},
    {"t": "challenge", "v": VERSION},
    {"t": "challenge", "v": VERSION, "nonce": "text" * 8},
], ids=["short-nonce", "no-nonce", "str-nonce"])
def test_client_refuses_a_malformed_challenge(challenge):
    c = ClientHandshake(SECRET, "control")
    c.hello()
    with pytest.raises(AuthError):
        c.receive(challenge)
    assert c.state == FAILED


# -- what the wire carries, to the byte --------------------------------------------------

def test_the_wire_speaks_version_2_with_nonces_of_32_bytes():
    # Other nodes' jmig, not this module's constants, decide what is compatible.
    c, s = pair()
    msgs = run(c, s)
    assert msgs[0]["v"] == 2 and msgs[1]["v"] == 2
    assert len(msgs[0]["nonce"]) == 32 and len(msgs[1]["nonce"]) == 32
    assert len(msgs[2]["mac"]) == 32 and len(msgs[3]["mac"]) == 32


@pytest.mark.parametrize("n", [31, 33])
def test_server_refuses_a_hello_whose_nonce_is_not_32_bytes(n):
    c, s = pair()
    reply = s.receive(dict(c.hello(), nonce=bytes(n)))
    assert s.state == FAILED and s.error.code == "protocol" and reply["code"] == "protocol"


@pytest.mark.parametrize("n", [31, 33])
def test_client_refuses_a_challenge_whose_nonce_is_not_32_bytes(n):
    c, s = pair()
    challenge = s.receive(c.hello())
    with pytest.raises(AuthError) as exc:
        c.receive(dict(challenge, nonce=bytes(n)))
    assert exc.value.code == "protocol"


def test_node_names_are_cut_at_64_characters():
    c = ClientHandshake(SECRET, "control", "c" * 100)
    s = ServerHandshake(SECRET, "control", "s" * 100, "0.1.0")
    run(c, s)
    assert s.peer == "c" * 64 and c.server == "s" * 64
    c, s = pair()
    c.node, s.node = "c" * 64, "s" * 64
    run(c, s)
    assert s.peer == "c" * 64 and c.server == "s" * 64


@pytest.mark.parametrize("code,prefix", [("version", "the node refused: "), ("busy", "")])
def test_a_refusal_shows_at_most_200_characters_of_the_nodes_words(code, prefix):
    c, s = pair()
    c.hello()
    with pytest.raises(AuthError) as exc:
        c.receive({"t": "error", "code": code, "message": "x" * 199 + "yz" + "w" * 300})
    assert exc.value.code == code and exc.value.message == prefix + "x" * 199 + "y"


def test_server_keeps_at_most_200_characters_of_why_the_client_left():
    c, s = pair()
    s.receive(c.hello())
    s.receive({"t": "error", "code": "auth", "message": "x" * 199 + "yz"})
    assert s.error.message == "the client gave up: " + "x" * 199 + "y"


@pytest.mark.parametrize("msg", [
    {"t": "auth", "mac": "text"},
    {"t": "auth"},
    {"t": "welcome", "mac": None},
], ids=["str-mac", "no-mac", "not-auth"])
def test_server_refuses_an_auth_that_is_malformed_with_protocol(msg):
    c, s = pair()
    s.receive(c.hello())
    reply = s.receive(msg)
    assert s.state == FAILED and s.error.code == "protocol" and reply["code"] == "protocol"


def test_server_refuses_another_message_carrying_a_valid_mac_in_place_of_auth():
    c, s = pair()
    auth = c.receive(s.receive(c.hello()))
    reply = s.receive(dict(auth, t="welcome"))
    assert s.state == FAILED and s.error.code == "protocol" and "mac" not in reply


# -- the secret never crosses the wire ---------------------------------------------

def _encoded(msgs) -> bytes:
    return b"".join(encode_frame(m) for m in msgs)


def _assert_secret_absent(blob: bytes, secret: bytes) -> None:
    assert secret not in blob
    assert secret.hex().encode() not in blob
    # Not even a sizable piece of it.
    for i in range(0, len(secret) - 8):
        assert secret[i:i + 8] not in blob


def test_the_secret_is_in_no_message_of_a_successful_handshake():
    c, s = pair()
    _assert_secret_absent(_encoded(run(c, s)), SECRET)


def test_the_secret_is_in_no_message_of_a_failed_handshake():
    c, s = pair(csecret=OTHER, ssecret=SECRET)
    hello = c.hello()
    challenge = s.receive(hello)
    auth = c.receive(challenge)
    blob = _encoded([hello, challenge, auth, s.receive(auth)])
    _assert_secret_absent(blob, SECRET)
    _assert_secret_absent(blob, OTHER)


# -- over trio streams ---------------------------------------------------------------

class Recorder(trio.abc.Stream):
    """A stream that records every byte sent through it."""

    def __init__(self, inner):
        self.inner = inner
        self.sent = bytearray()

    async def send_all(self, data):
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self):
        await self.inner.send_eof()

    async def aclose(self):
        await self.inner.aclose()


async def _handshake_over_memory(csecret, ssecret, ckind="control", skind="control"):
    left, right = trio.testing.memory_stream_pair()
    cl, sr = Recorder(left), Recorder(right)
    cfs, sfs = FramedStream(cl), FramedStream(sr)
    results = {}

    async def client():
        try:
            results["client"] = await client_handshake(cfs, csecret, ckind, "cli")
        except AuthError as exc:
            results["client"] = exc
        await cfs.aclose()

    async def server():
        try:
            results["server"] = await server_handshake(sfs, ssecret, skind, "srv", "9.9")
        except AuthError as exc:
            results["server"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    return results, bytes(cl.sent), bytes(sr.sent), cfs, sfs


async def test_handshake_over_a_memory_stream_pair():
    results, csent, ssent, cfs, sfs = await _handshake_over_memory(SECRET, SECRET)
    assert results["client"].state == DONE and results["server"].state == DONE
    assert cfs.peer == "srv" and sfs.peer == "cli"
    _assert_secret_absent(csent + ssent, SECRET)
    # What went over the wire are exactly four frames.
    dec = FrameDecoder()
    dec.receive_data(csent + ssent)
    n = 0
    while dec.next_frame() is not NEED_DATA:
        n += 1
    assert n == 4


async def test_wrong_secret_over_a_memory_stream_pair_fails_on_both_sides_with_auth():
    results, csent, ssent, _, _ = await _handshake_over_memory(OTHER, SECRET)
    assert isinstance(results["client"], AuthError) and results["client"].code == "auth"
    assert isinstance(results["server"], AuthError) and results["server"].code == "auth"
    _assert_secret_absent(csent + ssent, SECRET)
    _assert_secret_absent(csent + ssent, OTHER)
    # The server never sent a proof of its own.
    dec = FrameDecoder()
    dec.receive_data(ssent)
    sent = []
    while (f := dec.next_frame()) is not NEED_DATA:
        sent.append(f)
    assert [f["t"] for f in sent] == ["challenge", "error"]
    assert not any("mac" in f for f in sent)


async def test_a_recorded_client_handshake_replayed_to_the_server_is_refused():
    results, csent, _, _, _ = await _handshake_over_memory(SECRET, SECRET)
    assert results["server"].state == DONE
    # Play the client's recorded bytes (hello, auth) into a fresh server.
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, csent)
        with pytest.raises(AuthError) as exc:
            await server_handshake(FramedStream(right), SECRET, "control", "srv")
    assert exc.value.code == "auth"


async def test_wrong_port_over_a_memory_stream_pair():
    results, *_ = await _handshake_over_memory(SECRET, SECRET, ckind="pager", skind="normal")
    assert results["client"].code == "port" and results["server"].code == "port"


async def test_server_handshake_times_out_on_a_silent_client(autojump_clock):
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(trio.TooSlowError):
        await server_handshake(FramedStream(right), SECRET, "control", "srv", timeout=10)


async def test_client_handshake_times_out_on_a_silent_server(autojump_clock):
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(trio.TooSlowError):
        await client_handshake(FramedStream(left), SECRET, "control", timeout=10)
