"""Membership messages a node must take apart safely: malformed heartbeats
and leaves, loads of the wrong types, gossip beyond the member limit (on
in-process nodes over real TCP), and the load decoder under arbitrary
input (hypothesis)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jmig.ctl.client import RemoteError
from jmig.node import cluster as membership
from jmig.node.balance import choose_target
from jmig.node.cluster import LOAD_KEYS, Member, PeersFileError, clean_load, read_peers_file

from jmig.testing import wait_for


async def refused(cluster, node, op, args) -> RemoteError:
    with pytest.raises(RemoteError) as exc:
        await cluster.call(node, op, args)
    return exc.value


async def test_malformed_heartbeats_and_leaves_are_refused_and_the_node_serves_on(cluster):
    n = await cluster.start("n1")
    for args in ({}, {"from": "x"}, {"from": {"addr": 5}}, {"from": {"addr": "nohostport"}},
                 {"from": {"addr": "127.0.0.9:70000"}}):
        err = await refused(cluster, n, "cluster_heartbeat", args)
        assert err.code == "bad-request", args
    for args in ({}, {"addr": "127.0.0.9:50001"}, {"addr": 1, "incarnation": "x"}):
        err = await refused(cluster, n, "cluster_leave", args)
        assert err.code == "bad-request", args
    assert (await cluster.call(n, "nodes"))["nodes"][0]["self"] is True
    assert (await cluster.call(n, "ps"))["envs"] == []


async def test_a_heartbeat_makes_its_sender_a_member_with_only_well_typed_load(cluster):
    a = await cluster.start("a")
    b = await cluster.start("b")
    load = {"envs": 3, "runnable": "many", "cpu": 1, "free": 1 << 20, "cordoned": 1,
            "balance": True, "bogus": "x", "jobs": True}
    reply = await cluster.call(a, "cluster_heartbeat", {"from": {
        "addr": cluster.addr(b), "name": "b", "incarnation": b.incarnation, "load": load}})
    assert reply["from"]["incarnation"] == a.incarnation
    view = {v["addr"]: v for v in (await cluster.call(a, "nodes"))["nodes"]}
    got = view[cluster.addr(b)]
    assert got["state"] == "alive" and got["name"] == "b"
    # b's own heartbeats (a now asks it) replace what the test said; until
    # then the kept load had only the keys and types a load may have.
    assert set(got["load"]) <= set(LOAD_KEYS)
    # A leave naming another incarnation does not remove it ...
    await cluster.call(a, "cluster_leave", {"addr": cluster.addr(b), "incarnation": "other"})
    assert cluster.addr(b) in {v["addr"] for v in (await cluster.call(a, "nodes"))["nodes"]}
    # ... its own does, and gossip of that incarnation no longer brings it back.
    await cluster.call(a, "cluster_leave", {"addr": cluster.addr(b),
                                            "incarnation": b.incarnation})
    await cluster.call(a, "cluster_heartbeat", {
        "from": {"addr": "127.0.250.1:50001", "incarnation": "z"},
        "members": [[cluster.addr(b), b.incarnation]]})
    addrs = {v["addr"] for v in (await cluster.call(a, "nodes"))["nodes"]}
    assert cluster.addr(b) not in addrs and "127.0.250.1:50001" in addrs


async def test_gossip_beyond_the_member_limit_is_dropped(cluster, monkeypatch):
    monkeypatch.setattr(membership, "MAX_MEMBERS", 20)
    n = await cluster.start("n1")
    members = [[f"127.0.251.{i}:50001", f"inc{i}"] for i in range(1, 200)]
    await cluster.call(n, "cluster_heartbeat", {
        "from": {"addr": "127.0.252.1:50001", "incarnation": "x"}, "members": members})
    view = (await cluster.call(n, "nodes"))["nodes"]
    assert len(view) == 1 + 20
    # Nobody listens there: every one of them is failed within FAIL_SECONDS.
    await wait_for(lambda: all(m.state == "failed" for m in n.membership.members.values()),
                   timeout=membership.FAIL_SECONDS + 3)
    assert (await cluster.call(n, "ps"))["envs"] == []


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.text(max_size=12),
                                 st.one_of(st.none(), st.booleans(), st.integers(),
                                           st.floats(allow_nan=False), st.text(max_size=8),
                                           st.lists(st.integers(), max_size=3)),
                                 max_size=20)))
def test_clean_load_keeps_only_known_keys_of_their_type(load):
    out = clean_load(load)
    assert set(out) <= set(LOAD_KEYS)
    for k, v in out.items():
        assert isinstance(v, LOAD_KEYS[k])
        assert LOAD_KEYS[k] is bool or not isinstance(v, bool)


def test_peers_file_lines_comments_and_errors(tmp_path):
    f = tmp_path / "peers"
    f.write_text("# the cluster\n127.0.0.2:50001\n\n  127.0.0.3:50011  # m2\n")
    assert read_peers_file(f) == ["127.0.0.2:50001", "127.0.0.3:50011"]
    f.write_text("127.0.0.2:50001\n127.0.0.3\n")
    with pytest.raises(PeersFileError, match="line 2"):
        read_peers_file(f)
    f.write_bytes(b"#" * (membership.PEERS_FILE_BYTES + 1))
    with pytest.raises(PeersFileError, match="larger than"):
        read_peers_file(f)
    with pytest.raises(PeersFileError, match="cannot read"):
        read_peers_file(tmp_path / "absent")


def test_the_target_is_the_least_loaded_schedulable_member_with_room():
    def member(addr, runnable, free, **flags):
        return Member(addr, load={"runnable": runnable, "free": free, **flags})
    a = member("a:1", 0, 1 << 20, cordoned=True)      # least loaded, but cordoned
    b = member("b:1", 1, 64 << 20)
    c = member("c:1", 1, 8 << 20)
    d = member("d:1", 0, 4096)                         # least loaded, but no room
    e = member("e:1", 0, 64 << 20, stopping=True)
    assert choose_target([a, b, c, d, e], 16 * 4096) is b      # equal load: most free memory
    b.sent.append(object())                                     # one on its way to b
    assert choose_target([a, b, c, d, e], 16 * 4096) is c
    assert choose_target([a, d, e], 16 * 4096) is None
