"""Scriptable output: every subcommand's --json parses, on success and on
failure, with the documented field names (envid: the env the command acted
on, new_envid: the one it created); `program` survives save, load, copy
and migration; piped tables never wrap."""
import json
import re
import subprocess

import pytest

from jmig import programs

from .conftest import ctl_env, jmigctl_argv


def run(d, *argv, env=None, check=True):
    r = subprocess.run(jmigctl_argv(*argv), env=ctl_env(d, **(env or {})), capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"jmigctl {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r


def js(d, *argv):
    """jmigctl CMD --json ARGS on d, parsed."""
    return json.loads(run(d, *argv, "--json").stdout)


def program_of(d, envid) -> str:
    return [e["program"] for e in js(d, "ps") if e["envid"] == envid][0]


@pytest.mark.slow
def test_every_command_speaks_json_with_one_field_naming(pair, tmp_path):
    a, b = pair
    ps = js(a, "ps")
    assert {"envid", "parent", "status", "program", "state", "pages", "remote_pages", "runs",
            "node"} <= set(ps[0])
    assert {e["envid"]: e["program"] for e in ps}[4100] == "loop"
    spawned = json.loads(run(a, "spawn", "--json", "--paused", "loop", "20").stdout)
    assert set(spawned) == {"new_envid", "program"} and spawned["program"] == "loop"
    s = spawned["new_envid"]
    assert js(a, "resume", str(s)) == {"envid": s}
    assert js(a, "pause", str(s)) == {"envid": s}
    copied = js(a, "copy", str(s))
    assert set(copied) == {"envid", "new_envid"} and copied["envid"] == s
    c = copied["new_envid"]
    assert program_of(a, c) == "loop"                         # kept by copy
    saved = js(a, "save", str(c), "out_img")
    assert saved["envid"] == c and saved["image"] == "out_img" and "new_envid" not in saved
    loaded = js(a, "load", "out_img")
    assert loaded["new_envid"] > 0 and loaded["image"] == "out_img" and "envid" not in loaded
    assert program_of(a, loaded["new_envid"]) == "loop"       # kept by save and load
    moved = js(a, "migrate", str(loaded["new_envid"]), "--to", b.addr)
    assert moved["envid"] == loaded["new_envid"] and moved["new_envid"] > 0
    assert moved["method"] == "normal" and moved["job"]
    assert program_of(b, moved["new_envid"]) == "loop"        # kept by migration
    pg = js(a, "migrate", str(c), "--to", b.addr, "--method", "pgfault")
    assert program_of(b, pg["new_envid"]) == "loop"
    jobs = js(a, "jobs")
    assert {moved["job"], pg["job"]} <= {j["id"] for j in jobs}
    assert {"id", "kind", "envid", "target", "method", "state", "progress"} <= set(jobs[0])
    watched = js(a, "jobs", "watch", moved["job"])
    assert watched["new_envid"] == moved["new_envid"]
    assert js(a, "kill", str(s)) == {"envid": s}
    assert {"programs", "bundled", "images"} == set(js(a, "ls"))
    assert js(a, "info")["name"] == "a"
    assert {"info", "pager", "ipc"} == set(js(a, "stats"))
    assert js(a, "vmmap", "4100")["envid"] == 4100
    assert "Test Program" in js(a, "console")["text"]
    assert js(a, "console", "--lines", "0") == {"text": ""}
    img = tmp_path / "x.img"
    exported = js(a, "image", "export", "out_img", str(img))
    assert exported["envid"] == c and exported["program"] == "loop" and exported["size"] > 0
    assert js(a, "image", "verify", str(img))["valid"] is True
    assert js(a, "image", "inspect", str(img))["header"]["name"] == "loop"
    imported = js(b, "image", "import", str(img), "imported")
    assert imported["name"] == "imported" and imported["envid"] == c
    copied = js(a, "image", "copy", "out_img", "--to", b.addr, "--as", "copied")
    assert copied["name"] == "copied" and copied["to"] == b.addr
    ran = json.loads(run(a, "run", "--json", "hello").stdout)
    assert "hello, world" in ran["console"] and ran["reason"] == "idle" and ran["program"] == "hello"
    top = json.loads(run(a, "top", "--json", "--nodes", f"{a.addr},{b.addr}").stdout)
    assert set(top["nodes"]) == {a.addr, b.addr}
    assert 4100 in [e["envid"] for e in top["nodes"][a.addr]["envs"]]
    assert "complete -F _jmigctl jmigctl" in run(a, "completion", "bash").stdout
    # Failures, as JSON, with their documented exit codes.
    for argv, code in ((["pause", "99999"], 1), (["load", "nosuch"], 1),
                       (["cancel", "nosuch"], 1), (["vmmap", "99999"], 1),
                       (["migrate", "4100", "--to", "nowhere"], 2)):
        r = run(a, argv[0], "--json", *argv[1:], check=False)
        err = json.loads(r.stdout)["error"]
        assert r.returncode == code and err["code"] and err["message"], (argv, r.stdout)
    for envid in (c, loaded["new_envid"]):
        run(a, "kill", str(envid), check=False)


def test_piped_tables_never_wrap(pair, tmp_path):
    """Rows stay one line each, with stable columns, however narrow the
    terminal jmigctl thinks it has."""
    a, _ = pair
    long = tmp_path / "a_program_with_a_very_long_name_for_wrapping.elf"
    long.write_bytes(programs.load("loop"))
    spawned = json.loads(run(a, "spawn", "--json", "--paused", str(long), "30").stdout)["new_envid"]
    try:
        for extra in ([], ["-o", "wide"]):
            r = run(a, "ps", *extra, env={"COLUMNS": "30"})
            lines = r.stdout.splitlines()
            envs = js(a, "ps")
            assert len(lines) == len(envs) + 1, r.stdout          # a header, one line per env
            header = lines[0].split()
            assert header[:7] == ["ENV", "ID", "PARENT", "STATUS", "PROGRAM", "PAGES", "RUNS"]
            assert header[-1] == "STATE"
            rows = {int(line.split()[0]): line.split() for line in lines[1:]}
            assert set(rows) == {e["envid"] for e in envs}
            assert rows[spawned][4] == "a_program_with_a_very_long_name_for_wrapping"
            assert rows[spawned][-1] == "paused"
            assert rows[4100][4] == "loop"
            # awk-able: the columns line up where the header's do
            starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
            for line in lines[1:]:
                assert [m.start() for m in re.finditer(r"\S+", line)][:7] == starts[:7], line
        # The uploaded ELF is on the node's disk now: ls shows it.
        ls = run(a, "ls", env={"COLUMNS": "30"}).stdout.splitlines()
        assert any(line.split()[:3] == ["a_program_with_a_very_long_name_for_wrapping",
                                        "program", "(uploaded)"] for line in ls), ls
    finally:
        run(a, "kill", str(spawned), check=False)


def test_stats_and_migration_summaries_read_well(pair):
    a, b = pair
    r = run(a, "stats")
    assert "None" not in r.stdout and " 1 envs" not in r.stdout
    c = js(a, "copy", "4100")["new_envid"]
    r = run(a, "migrate", str(c), "--to", b.addr, "--method", "pgfault")
    assert f"You have successfully moved Env {c} to {b.addr}." in r.stdout
    assert re.search(r"method pgfault, 5 page table entries \(\d+ B\); the pages follow on "
                     r"demand, total", r.stdout), r.stdout
    assert "MiB/s" not in r.stdout
    moved = int(re.search(r"New Env: (\d+)", r.stdout).group(1))
    r = run(b, "migrate", str(moved), "--to", a.addr, "--method", "precopy", "--max-rounds", "1")
    assert "1 round" in r.stdout and "1 rounds" not in r.stdout
    back = int(re.search(r"New Env: (\d+)", r.stdout).group(1))
    # A finished pre-copy job (its rounds nested in its result) lists fine.
    assert js(b, "jobs")[0]["result"]["round_stats"][0]["round"] == 1
    assert "precopy" in run(b, "jobs").stdout
    run(a, "kill", str(back))
