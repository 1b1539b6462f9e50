"""jmigctl completion: the bash script completes commands, options, methods
and the node's env ids (zsh loads the same function)."""
import os
import subprocess
import sys

from .conftest import ctl_env, jmigctl_argv


def complete(env, *words: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being typed)."""
    script = subprocess.run(jmigctl_argv("completion", "bash"), env=env, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    line = " ".join(f"'{w}'" for w in words)
    prog = f"""{script}
COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _jmigctl; printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    r = subprocess.run(["bash", "-c", prog], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completion(pair):
    a, b = pair
    env = ctl_env(a, JMIG_NODES=f"{a.addr},{b.addr}")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    assert complete(env, "jmigctl", "pa") == ["pause"]
    assert {"migrate", "ps", "top", "image", "completion", "shell"} <= set(complete(env, "jmigctl", ""))
    assert complete(env, "jmigctl", "migrate", "4100", "--me") == ["--method"]
    assert complete(env, "jmigctl", "migrate", "4100", "--method", "") == ["normal", "pgfault",
                                                                           "precopy"]
    assert complete(env, "jmigctl", "migrate", "4100", "--to", "") == [a.addr, b.addr]
    assert "4100" in complete(env, "jmigctl", "pause", "")
    assert complete(env, "jmigctl", "image", "ex") == ["export"]
    assert complete(env, "jmigctl", "completion", "") == ["bash", "zsh"]
    zsh = subprocess.run(jmigctl_argv("completion", "zsh"), env=env, capture_output=True,
                         text=True, timeout=60).stdout
    assert zsh.startswith("#compdef jmigctl") and "bashcompinit" in zsh
