"""Real jmig-node processes driven by jmigctl, both as a subprocess and
through its main(argv).  Most tests share one module-scoped pair of
daemons on distinct loopback addresses with the original ports; the node
booted with `--boot "loop@4100 50"` prints a counter line every 50 ms."""
import io
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmig import programs
from jmig.ctl.main import main as jmigctl_main

from jmig.testing import PORT, next_host
from jmig.testing import Cluster, NodeProcess, make_secret

COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)\n")
HELLO_ELF = Path(programs.__file__).parent / "hello.elf"


def counters(d: NodeProcess, envid: int) -> list[int]:
    return [int(n) for e, n in COUNTER.findall(d.console()) if int(e) == envid]


def wait_until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_counters(d: NodeProcess, envid: int, n: int = 1) -> list[int]:
    wait_until(lambda: len(counters(d, envid)) >= n, what=f"{n} counter lines of env {envid}")
    return counters(d, envid)


def ok(d: NodeProcess, *argv) -> str:
    code, out, err = d.ctl(*argv)
    assert code == 0, f"jmigctl {' '.join(argv)} exited {code}: {err}"
    return out


def ps(d: NodeProcess) -> dict[int, dict]:
    return {e["envid"]: e for e in json.loads(ok(d, "ps", "--json"))}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two daemons, 127.0.x.y:50001 and 127.0.x.z:50001; the first runs env 4100."""
    with Cluster(tmp_path_factory.mktemp("pair")) as c:
        a = c.start("a", "--boot", "loop@4100 50", wait=False)
        b = c.start("b", wait=False)
        a.wait_listening()
        b.wait_listening()
        wait_counters(a, 4100)
        yield a, b


@pytest.fixture
def a(pair):
    d = pair[0]
    yield d
    # Leave env 4100 running for the next test.
    if 4100 in ps(d) and "paused" in ps(d)[4100]["state"]:
        d.ctl("resume", "4100")


# -- pause, resume, ps -----------------------------------------------------------------

def test_pause_stops_the_counter_and_resume_continues_from_the_next_value(a):
    wait_counters(a, 4100, 3)
    r = a.ctl_subprocess("pause", "4100")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Process 4100 is paused.\n", "")
    stopped = counters(a, 4100)
    time.sleep(0.3)                                            # six periods
    assert counters(a, 4100) == stopped
    e = ps(a)[4100]
    assert e["status"] == "Sleeping" and e["state"].startswith("paused")
    assert ok(a, "resume", "4100") == "Process 4100 is resumed.\n"
    after = wait_counters(a, 4100, len(stopped) + 2)
    assert after[len(stopped):len(stopped) + 2] == [stopped[-1] + 1, stopped[-1] + 2]
    assert after == list(range(len(after)))
    assert "paused" not in ps(a)[4100]["state"]


def test_ps_table_shows_the_statuses(a):
    out = ok(a, "ps")
    header, *rows = out.splitlines()
    assert header.split() == ["ENV", "ID", "PARENT", "STATUS", "PROGRAM", "PAGES", "RUNS", "STATE"]
    row = next(r for r in rows if r.startswith("4100 "))
    assert row.split()[:5] in (["4100", "00001004", "0", "Runnable", "loop"],
                               ["4100", "00001004", "0", "Running", "loop"])
    ok(a, "pause", "0x1004")
    row = next(r for r in ok(a, "ps").splitlines() if r.startswith("4100 "))
    assert row.split()[3] == "Sleeping" and "paused" in row
    assert ok(a, "ps", "-q").split() == [str(e) for e in ps(a)]


# -- copy and kill ---------------------------------------------------------------------

def test_copy_continues_from_the_original_and_kill_removes_it(a):
    wait_counters(a, 4100, 2)
    ok(a, "pause", "4100")
    last = counters(a, 4100)[-1]
    r = a.ctl_subprocess("copy", "4100")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"Copying from Env: 4100\nNew Env Created: (\d+)\n", r.stdout)
    assert m, r.stdout
    new = int(m.group(1))
    e = ps(a)[new]
    assert e["status"] == "Sleeping" and "paused" in e["state"] and e["parent"] == 4100
    time.sleep(0.1)
    assert counters(a, new) == []                              # the copy is created paused
    since = len(a.console())
    ok(a, "resume", str(new))
    wait_until(lambda: len(COUNTER.findall(a.console()[since:])) >= 3, what="the copy's lines")
    got = [(int(e), int(n)) for e, n in COUNTER.findall(a.console()[since:])]
    # The copy goes on from the original's counter, and only the copy runs
    # (the original is still paused).  loop reads its env id, then prints
    # it: its first line may name 4100, read before the pause.
    assert [n for _, n in got] == list(range(last + 1, last + 1 + len(got))), got
    assert got[0][0] in (4100, new) and all(e == new for e, _ in got[1:]), got

    r = a.ctl_subprocess("kill", str(new))
    assert (r.returncode, r.stdout) == (0, f"Process {new} is killed.\n")
    assert new not in ps(a)
    text = a.console()
    assert f"[00000000] destroying {new:08x}\n" in text
    assert f"[00000000] free env {new:08x}\n" in text
    n = len(counters(a, new))
    time.sleep(0.15)
    assert len(counters(a, new)) == n


# -- the node: info, ls, vmmap, console ---------------------------------------------------

def test_json_output_parses_and_has_the_fields(a):
    envs = json.loads(ok(a, "ps", "--json"))
    assert {"envid", "parent", "status", "name", "state", "pages", "remote_pages", "runs"} \
        <= set(envs[0])
    info = json.loads(ok(a, "info", "--json"))
    assert info["name"] == "a" and info["host"] == a.host
    assert info["ports"] == {"normal": PORT, "pgfault": PORT + 1, "pager": PORT + 2,
                             "control": PORT + 3}
    assert set(info["memory"]) == {"total", "used", "free"}
    assert info["envs"] >= 1 and info["data_dir"] == str(a.data_dir)
    ls = json.loads(ok(a, "ls", "--json"))
    assert {"programs", "bundled", "images"} == set(ls) and "loop" in ls["bundled"]
    vm = json.loads(ok(a, "vmmap", "4100", "--json"))
    assert vm["envid"] == 4100 and vm["ranges"][0]["start"] == 0x00800000
    assert {"start", "end", "pages", "perm", "state"} == set(vm["ranges"][0])
    spawned = json.loads(ok(a, "spawn", "--json", "hello"))
    assert spawned["program"] == "hello" and spawned["new_envid"] > 0 and "envid" not in spawned
    ok(a, "pause", "4100")
    copied = json.loads(ok(a, "copy", "--json", "4100"))
    assert copied["envid"] == 4100 and copied["new_envid"] in ps(a)
    ok(a, "kill", str(copied["new_envid"]))


def test_info_ls_vmmap_print_tables(a):
    r = a.ctl_subprocess("info")
    assert r.returncode == 0, r.stderr
    assert f"node      a (jmig " in r.stdout
    assert "ports     normal 50001, pgfault 50002, pager 50003, control 50004" in r.stdout
    assert "memory" in r.stdout and "free of 64.0 MiB" in r.stdout
    out = ok(a, "ls")
    assert out.splitlines()[0].split() == ["NAME", "KIND", "SIZE"]
    assert re.search(r"^loop\s+program \(bundled\)", out, re.M)
    out = ok(a, "vmmap", "4100")
    assert out.splitlines()[0].split() == ["START", "END", "PAGES", "PERM", "STATE"]
    assert re.search(r"^00800000\s+008\w{5}\s+\d+\s+r", out, re.M)


def test_console_prints_the_recent_output(a):
    out = ok(a, "console")
    assert "[00000000] new env 00001004" in out
    assert "Test Program, Env ID: 4100, Counter: 0\n" in out
    out = ok(a, "console", "--lines", "2")
    assert len(out.splitlines()) <= 2 and "Test Program" in out


def test_console_follow_streams_until_killed(a):
    env = dict(os.environ, JMIG_NODE=a.addr, JMIG_SECRET_FILE=str(a.secret_file))
    p = subprocess.Popen([sys.executable, "-m", "jmig.ctl.main", "console", "--follow",
                          "--lines", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        buf = b""
        deadline = time.monotonic() + 15
        while len(COUNTER.findall(buf.decode(errors="replace"))) < 3:
            assert time.monotonic() < deadline, f"no streamed output: {buf!r}"
            assert p.poll() is None, p.stderr.read()
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                buf += os.read(p.stdout.fileno(), 65536)
        values = [int(n) for e, n in COUNTER.findall(buf.decode()) if e == "4100"]
        assert values == list(range(values[0], values[0] + len(values)))
    finally:
        p.kill()
        p.wait(5)
        p.stdout.close()
        p.stderr.close()
    wait_until(lambda: '"event": "connection closed"' in a.log(), what="the follower's end")
    assert 4100 in ps(a)                                       # still serving


# -- spawn ---------------------------------------------------------------------------

def test_spawn_a_bundled_program(a):
    r = a.ctl_subprocess("spawn", "hello")
    assert r.returncode == 0, r.stderr
    envid = int(re.fullmatch(r"New Env Created: (\d+)\n", r.stdout).group(1))
    wait_until(lambda: f"i am environment {envid:08x}\n" in a.console(), what="hello's output")


def test_spawn_of_an_unknown_program_fails_clearly(a):
    r = a.ctl_subprocess("spawn", "nosuchprog")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith("jmigctl: no program 'nosuchprog'")
    assert "bundled: " in r.stderr and "hello" in r.stderr and "[no-such-program]" in r.stderr


def test_spawn_of_a_local_elf_uploads_it(a, tmp_path):
    path = tmp_path / "myhello.elf"
    shutil.copy(HELLO_ELF, path)
    out = ok(a, "spawn", str(path))
    envid = int(re.fullmatch(r"New Env Created: (\d+)\n", out).group(1))
    wait_until(lambda: f"i am environment {envid:08x}\n" in a.console(), what="hello's output")
    wait_until(lambda: '"program": "myhello"' in a.log(),            # named after the file
               what="the env named after the file in the log")


def test_spawn_of_a_garbage_elf_is_refused_with_bad_elf(a, tmp_path):
    path = tmp_path / "garbage.elf"
    path.write_bytes(os.urandom(3000))
    before = set(ps(a))
    code, out, err = a.ctl("spawn", str(path))
    assert (code, out) == (1, "") and "[bad-elf]" in err and err.startswith("jmigctl: ")
    assert "32-bit JOS ELF" in err                             # what to do about it
    trunc = tmp_path / "truncated.elf"
    trunc.write_bytes(HELLO_ELF.read_bytes()[:200])
    r = a.ctl_subprocess("spawn", str(trunc))
    assert r.returncode == 1 and "[bad-elf]" in r.stderr
    assert set(ps(a)) == before


def test_spawn_of_a_missing_local_file_is_a_usage_error(a, tmp_path):
    code, out, err = a.ctl("spawn", str(tmp_path / "nothere.elf"))
    assert code == 2 and "cannot read" in err and "nothere.elf" in err


# -- jmigctl's exit codes ---------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["pause", "resume", "kill", "copy", "vmmap"])
def test_an_unknown_env_exits_1(a, cmd):
    code, out, err = a.ctl(cmd, "99999")
    assert (code, out) == (1, "" if cmd != "copy" else "Copying from Env: 99999\n")
    assert err == ("jmigctl: no env 99999 (0001869f) [no-such-env]; "
                   "`jmigctl ps` lists the node's envs\n")


def test_pausing_a_paused_env_exits_1(a):
    envid = json.loads(ok(a, "spawn", "--json", "--paused", "loop", "20"))["new_envid"]
    code, out, err = a.ctl("pause", str(envid))
    assert code == 1 and f"env {envid} is already paused" in err and "[bad-state]" in err
    ok(a, "kill", str(envid))


def test_resuming_a_dead_env_exits_1(a):
    envid = json.loads(ok(a, "spawn", "--json", "hello"))["new_envid"]
    wait_until(lambda: f"[{envid:08x}] free env {envid:08x}" in a.console(), what="hello's exit")
    r = a.ctl_subprocess("resume", str(envid))
    assert r.returncode == 1 and f"no env {envid}" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("argv,hint", [
    (["pause", "abc"], "bad env id 'abc'"),
    (["kill", "0xZZ"], "bad env id"),
    (["resume", "-5"], "out of range"),
    (["pause"], "the following arguments are required: ENV"),
    (["vmmap"], "required"),
    (["migrate", "4100"], "--to"),
    (["frobnicate"], "invalid choice"),
    ([], "usage"),
])
def test_bad_command_lines_exit_2(a, argv, hint):
    code, out, err = a.ctl(*argv)
    assert code == 2
    assert hint in err and out == ""
    assert "paused" not in ps(a)[4100]["state"]                # nothing happened to the node


def test_bad_command_line_exits_2_as_a_subprocess(a):
    r = a.ctl_subprocess("pause", "not-an-env")
    assert r.returncode == 2 and "bad env id 'not-an-env'" in r.stderr and "usage:" in r.stderr


def test_an_unreachable_node_exits_3(pair):
    a = pair[0]
    nobody = f"{next_host()}:{PORT}"
    r = a.ctl_subprocess("--node", nobody, "ps")
    assert r.returncode == 3 and r.stdout == ""
    assert f"cannot reach node {nobody}" in r.stderr
    assert "is jmig-node running there?" in r.stderr and "--node" in r.stderr
    code, out, err = a.ctl("--node", nobody, "info")
    assert code == 3 and "is jmig-node running there?" in err


def test_a_different_secret_exits_4(pair, tmp_path):
    a = pair[0]
    other = make_secret(tmp_path)
    r = a.ctl_subprocess("--secret-file", str(other), "ps")
    assert r.returncode == 4 and r.stdout == ""
    assert "authentication failed" in r.stderr and "--secret-file" in r.stderr
    code, out, err = a.ctl("--secret-file", str(other), "pause", "4100")
    assert code == 4
    assert "paused" not in ps(a)[4100]["state"]                # nothing happened


def test_a_missing_secret_file_exits_4_and_says_what_to_do(pair, tmp_path):
    a = pair[0]
    code, out, err = a.ctl("--secret-file", str(tmp_path / "none"), "ps")
    assert code == 4 and "does not exist" in err and "--secret-file" in err


# -- two nodes ---------------------------------------------------------------------------

def test_two_nodes_on_distinct_addresses_with_the_original_ports(pair):
    a, b = pair
    assert a.host != b.host and a.port == b.port == 50001
    assert 4100 in ps(a) and 4100 not in ps(b)
    envid = json.loads(ok(b, "spawn", "--json", "loop", "50"))["new_envid"]
    wait_counters(b, envid, 2)
    assert set(ps(b)) == {envid}
    assert {e for e, _ in COUNTER.findall(b.console())} == {str(envid)}
    ok(b, "kill", str(envid))
    assert json.loads(ok(b, "info", "--json"))["name"] == "b"


# -- jmig-node's own exit codes ----------------------------------------------------------

def _exit_of(d: NodeProcess, timeout: float = 20) -> tuple[int, str]:
    code = d.proc.wait(timeout)
    return code, d.stderr_path.read_text()


def test_node_exits_3_when_its_port_is_in_use(pair, daemons):
    a = pair[0]
    d = daemons("dup", host=a.host, wait=False)
    code, err = _exit_of(d)
    assert code == 3
    # The log is JSON: the reason is an error event, and nothing else is written.
    assert err.count("\n") == 1 and "Traceback" not in err
    event = json.loads(err)
    assert event["level"] == "error" and event["exit_code"] == 3 and event["node"] == "dup"
    assert event["event"].startswith(f"cannot listen on {a.host}:50001..50004")
    assert 4100 in ps(a)                                       # the first node is unharmed


def test_node_exits_5_on_an_unusable_data_dir(daemons, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a directory\n")
    d = daemons("baddir", "--data-dir", str(f / "data"), wait=False)
    code, err = _exit_of(d)
    assert code == 5 and "Traceback" not in err
    assert "data directory" in err and "unusable" in err


def test_node_exits_4_when_an_explicit_secret_file_is_missing(daemons, tmp_path):
    d = daemons("nosecret", "--secret-file", str(tmp_path / "missing"), wait=False)
    code, err = _exit_of(d)
    assert code == 4 and "Traceback" not in err
    assert "missing" in err and "does not exist" in err


def test_node_exits_2_on_a_bad_command_line():
    bad = [["--port", "70000"], ["--cpus", "0"], ["--memory", "lots"], ["--boot", "loop@xyz"],
           ["--bogus"]]
    procs = [subprocess.Popen([sys.executable, "-m", "jmig.node.main", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in bad]
    for argv, p in zip(bad, procs):
        out, err = p.communicate(timeout=30)
        assert p.returncode == 2, (argv, err)
        assert "Traceback" not in err and err.strip(), argv


def test_node_exits_0_on_sigterm_and_sigint(daemons):
    t = daemons("term", "--boot", "loop 50", wait=False)
    i = daemons("int", "--boot", "loop 50", wait=False)
    t.wait_listening()
    i.wait_listening()
    wait_until(lambda: "Counter: 1\n" in t.console() and "Counter: 1\n" in i.console(),
               what="both nodes running")
    t.proc.send_signal(signal.SIGTERM)
    i.proc.send_signal(signal.SIGINT)
    assert t.proc.wait(15) == 0
    assert i.proc.wait(15) == 0
    for d, name in ((t, "SIGTERM"), (i, "SIGINT")):
        log = d.log()
        assert "Traceback" not in log
        assert any(json.loads(l).get("signal") == name for l in log.splitlines()
                   if l.startswith("{"))


# -- the default secret ------------------------------------------------------------------

def test_default_secret_is_created_and_shared_through_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("JMIG_SECRET_FILE", "JMIG_NODE", "XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    host = next_host()
    out, err = open(tmp_path / "node.out", "wb"), open(tmp_path / "node.err", "wb")
    node = subprocess.Popen([sys.executable, "-m", "jmig.node.main", "--host", host,
                             "--log-format", "json"], stdout=out, stderr=err, env=env)
    try:
        d = NodeProcess(tmp_path, Path("unused"), "default", host=host)
        d.proc = node
        d.wait_listening()
        secret = home / ".config" / "jmig" / "secret"
        assert secret.is_file()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_bytes().strip()) >= 32
        assert (home / ".local" / "share" / "jmig" / "nodes" / f"{host}_50001").is_dir()
        # jmigctl with the same HOME needs no secret option.
        r = subprocess.run([sys.executable, "-m", "jmig.ctl.main", "ps"], capture_output=True,
                           text=True, timeout=30, env=dict(env, JMIG_NODE=f"{host}:50001"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:3] == ["ENV", "ID", "PARENT"]
        out_, err_ = io.StringIO(), io.StringIO()
        code = jmigctl_main(["info"], environ={"HOME": str(home), "JMIG_NODE": f"{host}:50001"},
                            stdout=out_, stderr=err_)
        assert code == 0, err_.getvalue()
        assert f"node      {host}:50001" in out_.getvalue()
        # With another HOME there is no secret: exit 4, saying what to do.
        err_ = io.StringIO()
        code = jmigctl_main(["--node", f"{host}:50001", "ps"], environ={"HOME": str(tmp_path)},
                            stdout=io.StringIO(), stderr=err_)
        assert code == 4 and "start a node first, or pass --secret-file" in err_.getvalue()
        node.terminate()
        assert node.wait(15) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(5)
        out.close()
        err.close()
