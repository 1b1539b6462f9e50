"""No traceback, ever: a table of bad command lines for jmigctl, the shell
and jmig-node, each with the exit code the README documents and a message
that says what is wrong; with --json the same failure as
{"error": {"code", "message"}} on stdout."""
import json
import subprocess
import sys

import pytest


from .conftest import ctl_env, ctl_host, jmigctl_argv

NOBODY = "127.14.250.250:50001"          # nothing listens there


def bad_cases(a, b, tmp):
    garbage = tmp / "garbage.img"
    garbage.write_bytes(b"JMIG" + bytes(100))
    exists = tmp / "exists.img"
    exists.write_bytes(b"x")
    own = a.addr
    return [
        # (argv, extra environment, exit code, what the message says)
        (["--node", "127.0.0.59", "ps"], {}, 2, "add the base port: 127.0.0.59:50001"),
        (["--node", "foo", "ps"], {}, 2, "bad node address 'foo'"),
        (["--node", "127.0.0.50:99999", "ps"], {}, 2, "bad node address '127.0.0.50:99999'"),
        (["ps"], {"JMIG_NODE": "127.0.0.59"}, 2, "$JMIG_NODE: bad node address"),
        (["ps", "--nodes", f"{a.addr},foo"], {}, 2, "--nodes: bad node address 'foo'"),
        (["ps"], {"JMIG_NODES": "x:y"}, 2, "$JMIG_NODES: bad node address 'x:y'"),
        (["ps", "--bogus"], {}, 2, "unrecognized arguments: --bogus"),
        (["frobnicate"], {}, 2, "invalid choice: 'frobnicate'"),
        (["pause", "abc"], {}, 2, "bad env id 'abc'"),
        (["pause", "0"], {}, 2, "env id 0 out of range"),
        (["pause"], {}, 2, "the following arguments are required: ENV"),
        (["pause", "99999"], {}, 1, "no env 99999"),
        (["migrate", "4100", "--to", "127.0.0.3"], {}, 2, "add the base port"),
        (["migrate", "4100", "--to", b.addr, "--prefetch", "-5"], {}, 2,
         "--prefetch: -5 is out of range (0..64)"),
        (["migrate", "4100", "--to", b.addr, "--max-rounds", "0"], {}, 2,
         "--max-rounds: 0 is out of range (1..1000)"),
        (["migrate", "4100", "--to", b.addr, "--timeout", "0"], {}, 2, "--timeout: 0 is out of range"),
        (["migrate", "4100", "--to", b.addr, "--timeout", "soon"], {}, 2,
         "'soon' is not a number of seconds"),
        (["migrate", "4100", "--to", b.addr, "--method", "normal", "--no-push", "--max-rounds",
          "3", "--then", "pgfault", "--prefetch", "4"], {}, 2,
         "--push/--no-push, --prefetch, --max-rounds, --then do not apply to a normal migration"),
        (["migrate", "4100", "--to", b.addr, "--method", "pgfault", "--keep"], {}, 2,
         "--keep does not apply to a pgfault migration"),
        (["migrate", "4100", "--to", b.addr, "--method", "pgfault", "--max-rounds", "2"], {}, 2,
         "--max-rounds does not apply to a pgfault migration"),
        (["migrate", "4100", "--to", b.addr, "--method", "precopy", "--then", "pgfault",
          "--keep"], {}, 2, "--keep does not apply to --then pgfault"),
        (["migrate", "4100", "--to", b.addr, "--method", "precopy", "--prefetch", "2"], {}, 2,
         "--prefetch does not apply to a precopy migration without --then pgfault"),
        (["migrate", "4100", "--to", own], {}, 1, "is this node; migrate to another one"),
        (["migrate", "4100", "--to", f"localhost:{a.port}"], {}, 1, "migrate to another one"),
        (["console", "--lines", "-1"], {}, 2, "--lines: -1 is out of range"),
        (["save", "4100", "../etc"], {}, 1, "bad image name '../etc'"),
        (["load", "nosuch"], {}, 1, "no image nosuch"),
        (["jobs", "watch"], {}, 2, "jobs watch needs a job id"),
        (["jobs", "frob"], {}, 2, "invalid choice: 'frob'"),
        (["cancel", "nosuch"], {}, 1, "no job 'nosuch'"),
        (["recover", "4100"], {}, 1, "not held by a migration here"),
        (["run", "--cpus", "0", "hello"], {}, 2, "--cpus: 0 is out of range (1..64)"),
        (["run", "--memory", "lots", "hello"], {}, 2, "--memory: bad size 'lots'"),
        (["run", "nosuchprog"], {}, 1, "no bundled program or file 'nosuchprog'"),
        (["image", "inspect", str(tmp / "none.img")], {}, 1, "cannot read"),
        (["image", "verify", str(garbage)], {}, 1, "invalid image"),
        (["image", "import", str(garbage)], {}, 1, "is not a valid image"),
        (["image", "export", "nosuch", str(tmp / "out.img")], {}, 1, "no image nosuch"),
        (["image", "export", "x", str(exists)], {}, 2, "exists; use --force"),
        (["image", "copy", "nosuch", "--to", b.addr], {}, 1, "no image nosuch"),
        (["image", "copy", "x", "--to", "b"], {}, 2, "bad node address 'b'"),
        (["image"], {}, 2, "required: ACTION"),
        (["completion", "fish"], {}, 2, "invalid choice: 'fish'"),
        (["demo", "--host", "not-an-address"], {}, 2, "is not an IP address"),
        (["top", "--interval", "0"], {}, 2, "--interval: 0 is out of range"),
        (["--node", NOBODY, "ps"], {}, 3, f"cannot reach node {NOBODY}"),
        (["ps", "--nodes", f"{a.addr},{NOBODY}"], {}, 3, f"cannot reach node {NOBODY}"),
        (["--secret-file", str(tmp / "nosecret"), "ps"], {}, 4, "does not exist"),
    ]


def _run(argv, env, a):
    return subprocess.run(jmigctl_argv(*argv), env=ctl_env(a, **env), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
def test_every_bad_command_line_exits_with_its_code_and_says_why(pair, tmp_path):
    a, b = pair
    failures = []
    for argv, env, code, says in bad_cases(a, b, tmp_path):
        r = _run(argv, env, a)
        text = r.stdout + r.stderr
        if r.returncode != code or says not in text or "Traceback" in text:
            failures.append(f"jmigctl {' '.join(argv)} {env}: exit {r.returncode} (want {code})"
                            f", wanted {says!r} in:\n{text}")
    assert not failures, "\n\n".join(failures)
    # Nothing happened to the node meanwhile.
    r = _run(["ps", "--json"], {}, a)
    assert [e["state"] for e in json.loads(r.stdout) if e["envid"] == 4100] != ["paused"]


@pytest.mark.slow
def test_with_json_every_failure_is_a_json_error_on_stdout(pair, tmp_path):
    a, b = pair
    failures = []
    for argv, env, code, says in bad_cases(a, b, tmp_path):
        # --json before run's PROGRAM (after it, it would be the program's argument).
        argv = [*argv[:1], "--json", *argv[1:]] if argv[0] == "run" else [*argv, "--json"]
        r = _run(argv, env, a)
        try:
            doc = json.loads(r.stdout)
            if isinstance(doc, list):      # ps of several nodes: rows, then {node, error}s
                doc = next(x for x in doc if "error" in x)
            err = doc["error"]
            ok = (r.returncode == code and says in err["message"] and err["code"]
                  and set(err) == {"code", "message"} and "Traceback" not in r.stderr)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            failures.append(f"jmigctl {' '.join(argv)}: exit {r.returncode}:\n"
                            f"{r.stdout}{r.stderr}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_output_cut_short_by_a_closed_pipe_is_not_an_error(pair, tmp_path):
    """`... | head -1`: the reader went away; jmigctl stops quietly with 0."""
    a, _ = pair
    img = tmp_path / "loop.img"
    r = _run(["save", "--pause", "4100", "pipe_image", "--force"], {}, a)
    assert r.returncode == 0, r.stderr                 # 4100 runs again after the save
    r = _run(["image", "export", "pipe_image", str(img)], {}, a)
    assert r.returncode == 0, r.stderr
    for argv in (["image", "inspect", "--json", str(img)], ["run", "primes"],
                 ["ps", "-o", "wide"], ["completion", "bash"]):
        cmd = " ".join(jmigctl_argv(*argv)) + " | head -1"
        p = subprocess.run(["bash", "-c", f"{cmd}; echo \"exit=${{PIPESTATUS[0]}}\" >&2"],
                           env=ctl_env(a), capture_output=True, text=True, timeout=120)
        assert p.stdout.count("\n") == 1, (argv, p.stdout)
        assert p.stderr.strip() == "exit=0", (argv, p.stderr)


def test_run_says_when_an_option_follows_the_program(pair):
    a, _ = pair
    r = _run(["run", "hello", "--cpus", "4"], {}, a)
    assert r.returncode == 0 and "hello, world" in r.stdout
    assert "'--cpus' comes after the program, so it is the program's argument" in r.stderr


def test_jmig_node_bad_command_lines_exit_2_with_a_json_event(tmp_path):
    host = ctl_host()
    cases = [(["--boot", "nosuchprog"], "--boot: no program 'nosuchprog'"),
             (["--port", "0"], "port 0 out of range"),
             (["--cpus", "65"], "--cpus must be 1..64")]
    for argv, says in cases:
        p = subprocess.run([sys.executable, "-m", "jmig.node.main", "--host", host,
                            "--data-dir", str(tmp_path / "d"), "--secret-file",
                            str(tmp_path / "s"), "--log-format", "json", *argv],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (argv, p.stderr)
        lines = p.stderr.splitlines()
        events = [json.loads(line) for line in lines]        # every line is JSON
        assert any(says in e["event"] and e["level"] == "error" and e["exit_code"] == 2
                   for e in events), (argv, p.stderr)
        assert "Traceback" not in p.stderr


def test_jmig_node_log_is_pure_json_with_node_on_every_event(daemons):
    d = daemons("pure", "--boot", "hello")
    d.ctl("ps")
    d.stop()
    lines = d.log().splitlines()
    assert lines
    events = [json.loads(line) for line in lines]           # no plain line among them
    assert all(e.get("node") == "pure" for e in events), [e for e in events if "node" not in e]


@pytest.mark.slow
def test_the_shell_survives_every_bad_line(pair):
    a, b = pair
    script = "\n".join([
        "node 127.0.0.51", "ps -q", "node foo:bar", "pause", "pause 4100 4101", "frobnicate",
        "migrate_send_normal 4100", "migrate_send_pgfault 4100 127.0.0.3 50002 x",
        f"migrate_send_pgfault 4100 {b.host} 50002 {a.host} 50007",
        f"migrate_send_normal 4100 {b.host} 50001 10.1.2.3",
        "migrate_send_precopy 4100 h notaport", "trace maybe", "help nosuch", "pause \"4100",
        "save", "load a b", "console sideways", "node", "ps -q", ""])
    r = subprocess.run(jmigctl_argv("shell"), input=script, env=ctl_env(a),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    out = r.stdout
    for says in (
            "error: bad node address '127.0.0.51': use HOST:PORT with PORT 1..65532, e.g. "
            "127.0.0.1:50001 (add the base port: 127.0.0.51:50001) (usage: node HOST:P)",
            "error: bad node address 'foo:bar'",
            "error: pause: missing ENV (usage: pause ENV)",
            "error: pause: unexpected '4101' (usage: pause ENV)",
            "error: unknown command 'frobnicate'; type help",
            "error: migrate_send_normal: missing REMOTE_IP REMOTE_PORT LOCAL_IP",
            "error: migrate_send_pgfault: missing LOCAL_PORT",
            f"error: LOCAL_PORT 50007 is not {a.addr}'s page-server port 50003 (or its port 50001)",
            f"error: LOCAL_IP 10.1.2.3 is not the address of {a.addr} ({a.host})",
            "error: REMOTE_PORT 'notaport' is not a port number",
            "error: trace takes on or off",
            "error: unknown command 'nosuch'; type help",
            "error: No closing quotation",
            "error: save: missing ENV NAME (usage: save ENV NAME)",
            "error: load: unexpected 'b' (usage: load NAME)"):
        assert says in out, f"{says!r} not in:\n{out}"
    # The node was never changed and ps still works, twice (before and after).
    assert out.count("\n4100\n") + out.startswith("4100\n") >= 2, out
    assert f"\n{a.addr}\n" in out
    assert "is paused" not in out and "moved" not in out
    assert "jmigctl" not in out                                  # the shell's own words
