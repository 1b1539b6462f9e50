"""The two ways tests run nodes both work: real daemons and in-process."""
from jmig.testing import console_of, wait_for


def test_daemon_boots_the_test_program_as_4100(daemons):
    d = daemons("n1", "--boot", "loop@4100 50")
    code, out, err = d.ctl("ps", "--json")
    assert code == 0, err
    assert '"envid": 4100' in out
    r = d.ctl_subprocess("pause", "4100")
    assert r.returncode == 0 and r.stdout.strip() == "Process 4100 is paused."


async def test_in_process_nodes_run_programs(cluster):
    a = await cluster.start("a")
    res = await cluster.call(a, "spawn", {"program": "hello"})
    assert res["envid"] == 4096
    await wait_for(lambda: "i am environment 00001000" in console_of(a))
