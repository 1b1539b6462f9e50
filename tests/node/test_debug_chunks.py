"""The original project's per-chunk lines become debug-level log events."""
import json
import re




def test_normal_migration_logs_each_chunk_at_debug_level_only(daemons):
    a = daemons("dbg-a", "--log-level", "debug", "--boot", "hello@4100")
    b = daemons("dbg-b", "--log-level", "debug")
    code, out, err = a.ctl("spawn", "--paused", "loop")
    assert code == 0, err
    envid = out.split(":")[1].strip()
    code, out, err = a.ctl("migrate", envid, "--to", b.addr)
    assert code == 0, err
    sent = [json.loads(l) for l in a.log().splitlines() if '"send page"' in l]
    got = [json.loads(l) for l in b.log().splitlines() if '"receive page"' in l]
    assert sent and got
    assert {e["sequence"] for e in sent} == {1, 2, 3, 4}
    assert {e["level"] for e in sent} == {"debug"}
    assert {(e["va"], e["sequence"]) for e in sent} == {(e["va"], e["sequence"]) for e in got}
    assert ("0x00800000", 1) in {(e["va"], e["sequence"]) for e in sent}
    # Every event names its node and env, and every va is written one way.
    assert {e["node"] for e in sent} == {"dbg-a"} and {e["node"] for e in got} == {"dbg-b"}
    assert {e["envid"] for e in sent} == {int(envid)} == {e["envid"] for e in got}
    events = [json.loads(l) for d in (a, b) for l in d.log().splitlines()]
    assert all(re.fullmatch(r"0x[0-9a-f]{8}", e["va"]) for e in events if "va" in e)
    assert all("node" in e for e in events)


def test_at_info_level_no_chunk_events_are_written(daemons):
    a = daemons("info-a")
    b = daemons("info-b")
    code, out, err = a.ctl("spawn", "--paused", "loop")
    envid = out.split(":")[1].strip()
    assert a.ctl("migrate", envid, "--to", b.addr)[0] == 0
    assert '"send page"' not in a.log() and '"receive page"' not in b.log()
