"""Mutation testing with cosmic-ray: `python3 dev.py mutate [PATH] [--sample N]`.

For each module under PATH (targets.toml says which modules and which
tests), in a copy of the tree of its own, .mutants/MODULE/tree (so that
the work tree is never mutated and can be edited meanwhile, and runs on
different modules can go side by side, one per core):

  1. the target's tests run once unmutated (they must pass; their time
     sets the per-mutant timeout), under coverage with one context per
     test unless the target says `select = false`: selection.json maps
     each line of the module to the tests that run it (selection.py).
     That run, in .mutants/baseline/, serves every module of the target
     in the same directory until a file copy_tree copies changes; the
     module's tree is a copy of the tree it ran in;
  2. a cosmic-ray session .mutants/MODULE/session.sqlite lists the mutants
     (all of them, or N drawn at random with --sample N); those listed
     in equivalent.toml are recorded as equivalent, with their reason,
     and never run;
  3. `cosmic-ray exec` applies each mutant to the copy and runs the tests
     (pytest -x: a killed mutant stops at its first failing test): only
     those that run the mutated line (runtests.py), or, with
     `select = false` or --whole, all the target's tests;
  4. a report: per module killed / survived / not covered (no test runs
     the line) / equivalent / score, and every survivor with its id, line
     and diff.

A session that exists already is resumed (only the mutants without a
result run) if the module and the sample are the same, unless --fresh;
--survivors runs its survivors again, after new tests.  The score is
killed / (killed + survived + not covered): equivalents are left out, and
so are mutants cosmic-ray could not run.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / ".mutants"

sys.path.insert(0, str(HERE))
import runtests  # noqa: E402
import selection  # noqa: E402


def load_targets() -> dict:
    with open(HERE / "targets.toml", "rb") as f:
        return tomllib.load(f)


def load_equivalents() -> list[dict]:
    with open(HERE / "equivalent.toml", "rb") as f:
        return tomllib.load(f).get("mutant", [])


def modules_under(path: str, cfg: dict) -> list[str]:
    """The .py files under path (relative to ROOT) that some target covers."""
    p = (ROOT / path).resolve()
    files = [p] if p.is_file() else sorted(p.rglob("*.py"))
    out = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in cfg.get("exclude", ())):
            continue
        if target_of(rel, cfg) is not None:
            out.append(rel)
    return out


def target_of(module: str, cfg: dict) -> dict | None:
    """The most specific target whose path is module or contains it."""
    best = None
    for t in cfg["target"]:
        tp = t["path"].rstrip("/")
        if module == tp or module.startswith(tp + "/"):
            if best is None or len(tp) > len(best["path"].rstrip("/")):
                best = t
    return best


COPIED = ("jmig", "tests", "examples")
_IGNORED = ("__pycache__", ".hypothesis")
_IGNORED_PARTS = set(_IGNORED)


def copy_tree(tree: Path) -> None:
    """jmig/, tests/, examples/ and pyproject.toml into tree (afresh):
    examples/ for the tests that read the bundled programs' sources
    (tests/kernel/test_bundled_programs.py)."""
    if tree.exists():
        shutil.rmtree(tree)
    ignore = shutil.ignore_patterns(*_IGNORED, "*.pyc")
    for name in COPIED:
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")


def tree_digest() -> str:
    """A digest of what copy_tree copies, names and contents, but this
    tool's own files (tests/mutation), which no target's tests run."""
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    tool = Path(__file__).resolve().parent
    for name in COPIED:
        for f in sorted((ROOT / name).rglob("*")):
            if f.is_file() and f.suffix != ".pyc" and not _IGNORED_PARTS & set(f.parts) \
                    and tool not in f.parents:
                h.update(f.relative_to(ROOT).as_posix().encode() + b"\0")
                h.update(f.read_bytes())
    return h.hexdigest()


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except OSError:
        return None


def test_command(target: dict) -> str:
    return shlex.join([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                       *target["tests"]])


def coverage_command(target: dict, d: Path, tree: Path, module: str) -> list[str]:
    """The target's tests under coverage, started before pytest (so that it
    sees the imports of jmig's pytest plugin too), the module's directory
    measured, and the timing plugin, which gives each test its context.

    The jmig-node daemons the tests start are measured too (baseline()
    points COVERAGE_PROCESS_START at coveragerc-daemons, which coverage's
    .pth file reads when a Python process starts): each writes a data file
    of its own, coverage.sqlite.SUFFIX, under the context of the test that
    started it ($JMIG_MUTATE_CONTEXT, which the timing plugin sets)."""
    rc = d / "coveragerc"
    for old in d.glob("coverage.sqlite*"):
        old.unlink()
    common = f"[run]\ndata_file = {d / 'coverage.sqlite'}\nsource = {(tree / module).parent}\n"
    rc.write_text(common)
    (d / "coveragerc-daemons").write_text(common + "parallel = true\n"
                                          "context = ${JMIG_MUTATE_CONTEXT-}\n")
    return [sys.executable, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest",
            "-x", "-q", "-p", "no:cacheprovider", "-p", "tests.mutation.pytest_timing",
            *target["tests"]]


def write_selection(d: Path, base: Path, tree: Path, module: str, took: float,
                    cfg: dict) -> dict:
    """selection.json (selection.py) in d from the coverage run in the
    baseline dir `base` (of the tree base/tree), for the module in `tree`,
    and pristine.py, the module as it was, which runtests.py compares the
    mutant with."""
    from coverage import CoverageData

    src = (tree / module).read_text()
    timing = json.loads((base / "timing.json").read_text())
    timing["seconds"] = took           # the process's wall time, start-up included
    by_line: dict[int, set[str]] = {}
    for f in sorted(base.glob("coverage.sqlite*")):     # pytest's, then each daemon's
        data = CoverageData(str(f))
        data.read()
        for line, ctxs in (data.contexts_by_lineno(str(base / "tree" / module)) or {}).items():
            by_line.setdefault(line, set()).update(ctxs)
    sel = selection.build_map(src, by_line, timing,
                              module.removesuffix(".py").replace("/", "."))
    sel.update(tree=str(tree), module=module, timeout_factor=cfg.get("timeout_factor", 3.0),
               min_timeout=cfg.get("min_timeout", 30))
    (d / "selection.json").write_text(json.dumps(sel))
    (d / "pristine.py").write_text(src)
    return sel


def _env(tree: Path) -> dict:
    # The copy first on the path: the tests, and the jmig-node daemons they
    # start (python -m jmig.node.main), import the mutated modules.
    return dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")


def start_forkserver(d: Path, tree: Path, timing_file: Path) -> subprocess.Popen:
    """forkserver.py in the tree, preloading what the unmutated run imported
    from outside it (timing_file, pytest_timing.py's); runtests.py uses it
    while its socket exists."""
    sock = d / "forkserver.sock"
    sock.unlink(missing_ok=True)
    timing = json.loads(timing_file.read_text())
    (d / "preload.json").write_text(json.dumps(timing.get("outside", [])))
    # One BLAS thread: the children are forked from a process that imported numpy.
    env = dict(_env(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(HERE / "forkserver.py"), str(sock),
                             str(d / "preload.json")], cwd=tree, env=env)
    for _ in range(1200):
        if sock.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    return proc


def _children_cpu() -> float:
    """User + system seconds of the waited-for child processes so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _baseline_env(tree: Path, d: Path) -> dict:
    # The unmutated run may write bytecode (jmig's modules, pytest's
    # rewritten tests) into the tree: every mutant's run reads it rather
    # than compiling them again -- all but the mutated module's, removed
    # after this run (_forget_bytecode); mutants' runs write none.
    env = dict(_env(tree), JMIG_MUTATE_TIMING=str(d / "timing.json"))
    del env["PYTHONDONTWRITEBYTECODE"]
    return env


class Unmutated(Exception):
    """The target's tests fail unmutated (their output)."""


def _live_holder(lock: Path) -> int | None:
    """The pid in a lock file, if that process is alive (not this one)."""
    try:
        pid = int(lock.read_text())
        if pid != os.getpid():
            os.kill(pid, 0)
            return pid
    except (OSError, ValueError):
        pass
    return None


def baseline(target: dict, module: str) -> tuple[Path, float]:
    """The unmutated run of the target's tests under coverage, shared by
    every module of the target in the same directory as long as nothing
    copy_tree copies has changed: WORK/baseline/NAME-KEY holds the tree it
    ran in (with the bytecode it wrote), the coverage data (coverage_command)
    and timing.json.  Returns (that dir, the run's wall time in seconds);
    raises Unmutated if the tests fail.  A run another process is making
    is waited for; older baselines of the same target and directory are
    removed."""
    source = Path(module).parent.as_posix()
    name = f"{target['path'].rstrip('/')}@{source}".replace("/", ".")
    key = hashlib.sha256((tree_digest() + json.dumps(target["tests"])).encode()).hexdigest()
    root = WORK / "baseline"
    base = root / f"{name}-{key[:16]}"
    done, lock = base / "done.json", base / "lock"
    base.mkdir(parents=True, exist_ok=True)
    while not done.exists() and _live_holder(lock) is not None:
        time.sleep(2)
    if done.exists():
        return base, json.loads(done.read_text())["seconds"]
    lock.write_text(str(os.getpid()))
    for old in root.glob(f"{name}-*"):
        if old != base and _live_holder(old / "lock") is None:
            shutil.rmtree(old, ignore_errors=True)
    tree = base / "tree"
    copy_tree(tree)
    t0 = time.monotonic()
    # The daemons the tests start measure themselves (coverage_command).
    env = dict(_baseline_env(tree, base), COVERAGE_PROCESS_START=str(base / "coveragerc-daemons"))
    r = subprocess.run(coverage_command(target, base, tree, module), cwd=tree, env=env,
                       capture_output=True, text=True)
    took = time.monotonic() - t0
    lock.unlink()
    if r.returncode != 0:
        raise Unmutated(r.stdout[-3000:] + "\n" + r.stderr[-3000:])
    done.write_text(json.dumps({"seconds": took}))
    return base, took


def _forget_bytecode(tree: Path, module: str) -> None:
    """No cached bytecode of the module to be mutated: each mutant is
    compiled from its source."""
    path = tree / module
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink()


# -- the session ------------------------------------------------------------------------------

def all_mutants(tree: Path, module: str, operators: list[str]) -> list:
    """cosmic-ray's work items for every operator's every position in
    module, each with the reason it is equivalent by rule (or None)."""
    import cosmic_ray.plugins
    from cosmic_ray.ast import ast_nodes, get_ast_from_path
    from cosmic_ray.ast.ast_query import ASTQuery
    from cosmic_ray.work_item import MutationSpec, WorkItem

    path = tree / module
    ast = get_ast_from_path(path)
    future = FUTURE in path.read_text()
    items = []
    for name in operators:
        op = cosmic_ray.plugins.get_operator(name)()
        positions = [(node, s, e) for node in ast_nodes(ast) for s, e in op.mutation_positions(node)]
        for occurrence, (node, start, end) in enumerate(positions):
            spec = MutationSpec(module_path=str(path), operator_name=name, operator_args={},
                                occurrence=occurrence, start_pos=start, end_pos=end,
                                definition_name=ASTQuery(node).get_definition_name())
            item = WorkItem.single(job_id=uuid.uuid4().hex, mutation=spec)
            items.append((item, IN_ANNOTATION if future and _in_annotation(node) else None))
    return items


FUTURE = "from __future__ import annotations"
IN_ANNOTATION = ("in an annotation, never evaluated (the module imports annotations "
                 "from __future__)")


def _in_annotation(node) -> bool:
    """Whether a parso node lies in a parameter, return or variable annotation."""
    child, p = node, node.parent
    while p is not None:
        if p.type == "tfpdef":
            return child is p.children[-1] and len(p.children) == 3
        if p.type == "annassign":
            return child is p.children[1]
        if p.type == "funcdef":
            i = p.children.index(child)
            return i > 0 and getattr(p.children[i - 1], "value", None) == "->"
        if p.type in ("suite", "file_input", "classdef"):
            return False
        child, p = p, p.parent
    return False


def mutant_key(spec, lines: list[str], tree: Path) -> dict:
    """How equivalent.toml names a mutant: module, operator, the source
    line (stripped) and column where it applies, and its variant (the nth
    mutation of this operator at this position: NumberReplacer's +1 is 0,
    its -1 is 1)."""
    line = spec.start_pos[0]
    return {"module": Path(spec.module_path).relative_to(tree).as_posix(),
            "operator": spec.operator_name.removeprefix("core/"), "line": line,
            "col": spec.start_pos[1], "code": lines[line - 1].strip()}


def _keys(items, tree: Path) -> list[dict]:
    import cosmic_ray.plugins
    from cosmic_ray.ast import ast_nodes, get_ast_from_path

    src: dict[str, list[str]] = {}
    starts: dict[tuple, list] = {}
    keys = []
    for it in items:
        spec = it.mutations[0]
        lines = src.setdefault(spec.module_path, Path(spec.module_path).read_text().splitlines())
        k = mutant_key(spec, lines, tree)
        # The variant counts this operator's earlier occurrences at the same
        # spot in the whole module (not only in a sample).
        where = (spec.module_path, spec.operator_name)
        if where not in starts:
            op = cosmic_ray.plugins.get_operator(spec.operator_name)()
            ast = get_ast_from_path(Path(spec.module_path))
            starts[where] = [st for node in ast_nodes(ast) for st, _ in op.mutation_positions(node)]
        k["variant"] = starts[where][:spec.occurrence].count(tuple(spec.start_pos))
        keys.append(k)
    return keys


def equivalent_reason(key: dict, equivalents: list[dict]) -> str | None:
    """The reason an entry of equivalent.toml gives for this mutant, if one
    names it: by module, operator, the line's code, column and variant.
    An entry's `line` is where the line was when it was written, for a
    reader: lines move as the module grows, the code stays."""
    for e in equivalents:
        if (e["module"] == key["module"] and e["operator"] == key["operator"]
                and e["code"] == key["code"] and e.get("col", key["col"]) == key["col"]
                and e.get("variant", 0) == key["variant"]):
            return e["reason"]
    return None


def init_session(tree: Path, db_path: Path, module: str, cfg: dict, sample: int | None,
                 seed: int) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    pairs = all_mutants(tree, module, cfg["operators"])
    if sample is not None and sample < len(pairs):
        pairs = random.Random(f"{seed}:{module}").sample(pairs, sample)
    items = [it for it, _ in pairs]
    keys = _keys(items, tree)
    equivalents = load_equivalents()
    with use_db(str(db_path), WorkDB.Mode.create) as db:
        db.clear()
        db.add_work_items(items)
        for (it, by_rule), k in zip(pairs, keys):
            reason = by_rule or equivalent_reason(k, equivalents)
            if reason is not None:
                db.set_result(it.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                    output=f"equivalent: {reason}"))


def retry_survivors(tree: Path, db_path: Path) -> None:
    """Forget the survivors' results, so that exec runs them again (after
    new tests), except those equivalent.toml now lists: those are recorded
    as equivalent."""
    import sqlite3

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with sqlite3.connect(db_path) as con:
        con.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    equivalents = load_equivalents()
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = list(db.work_items)
        done = {job for job, _ in db.results}
        for it, k in zip(items, _keys(items, tree)):
            reason = None if it.job_id in done else equivalent_reason(k, equivalents)
            if reason is not None:
                db.set_result(it.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                    output=f"equivalent: {reason}"))


def write_config(path: Path, tree: Path, module: str, command: str, timeout: float) -> None:
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {str(tree / module)!r}\n"
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {command!r}\n"
        "\n[cosmic-ray.distributor]\nname = \"local\"\n")


# -- the report -------------------------------------------------------------------------------

def report(tree: Path, db_path: Path, module: str) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts = {"killed": 0, "survived": 0, "not covered": 0, "equivalent": 0, "other": 0,
              "pending": 0}
    survivors, uncovered = [], []
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = list(db.work_items)
        keys = dict(zip((it.job_id for it in items), _keys(items, tree)))
        results = dict(db.results)
        for it in items:
            r = results.get(it.job_id)
            if r is None:
                counts["pending"] += 1
            elif r.worker_outcome == WorkerOutcome.SKIPPED and (r.output or "").startswith("equivalent"):
                counts["equivalent"] += 1
            elif (r.worker_outcome != WorkerOutcome.NORMAL
                  or runtests.SELECTION_ERROR in (r.output or "")):
                counts["other"] += 1
            elif r.test_outcome == TestOutcome.SURVIVED and runtests.NOT_COVERED in (r.output or ""):
                counts["not covered"] += 1
                uncovered.append((keys[it.job_id], r.diff or ""))
            elif r.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                survivors.append((keys[it.job_id], r.diff or ""))
            elif r.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            else:
                counts["other"] += 1
    run = counts["killed"] + counts["survived"] + counts["not covered"]
    score = counts["killed"] / run if run else float("nan")
    print(f"\n== {module}: {len(items)} mutants: {counts['killed']} killed, "
          f"{counts['survived']} survived (tests run the line), "
          f"{counts['not covered']} not covered by any test, "
          f"{counts['equivalent']} equivalent, "
          f"{counts['other']} not run (incompetent/selection error), "
          f"{counts['pending']} pending; score {score:.1%}")
    for what, group in (("SURVIVED", survivors), ("NOT COVERED", uncovered)):
        for k, diff in sorted(group, key=lambda s: (s[0]["line"], s[0]["operator"])):
            print(f"  {what} {k['module']}:{k['line']}:{k['col']} {k['operator']}"
                  f"{'#' + str(k['variant']) if k['variant'] else ''}")
            for d in diff.splitlines():
                if d.startswith(("-", "+")) and not d.startswith(("---", "+++")):
                    print(f"      {d}")
    return dict(counts, module=module, score=score)


def session_name(module: str, args) -> str:
    """A module's directory under .mutants: one session per module, per
    sample (so that a sample never replaces the whole module's results),
    and per way of running (--whole)."""
    name = module.replace("/", ".").removesuffix(".py")
    if args.sample is not None:
        name += f"+sample{args.sample}-seed{args.seed}"
    return name + ("+whole" if args.whole else "")


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dev.py mutate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default="jmig",
                    help="a module or directory (default: every configured module)")
    ap.add_argument("--sample", type=int, metavar="N",
                    help="N mutants drawn at random per module (default: all)")
    ap.add_argument("--seed", type=int, default=20, help="of the sample (default 20)")
    ap.add_argument("--fresh", action="store_true", help="start the sessions anew")
    ap.add_argument("--survivors", action="store_true",
                    help="run the survivors of the sessions again (after new tests or "
                         "new entries in equivalent.toml)")
    ap.add_argument("--whole", action="store_true",
                    help="every mutant runs all its target's tests, no selection (a session "
                         "of its own, .mutants/MODULE+whole: to compare)")
    ap.add_argument("--report", action="store_true", help="only report existing sessions")
    ap.add_argument("--list", action="store_true", help="only list modules and their tests")
    args = ap.parse_args(argv)
    cfg = load_targets()
    modules = modules_under(args.path, cfg)
    if not modules:
        print(f"dev.py mutate: no configured module under {args.path}", file=sys.stderr)
        return 2
    if args.list:
        for m in modules:
            print(f"{m}: {' '.join(target_of(m, cfg)['tests'])}")
        return 0
    summary = []
    for module in modules:
        d = WORK / session_name(module, args)
        tree, db_path = d / "tree", d / "session.sqlite"
        if args.report:
            if db_path.exists():
                summary.append(report(tree, db_path, module))
            continue
        d.mkdir(parents=True, exist_ok=True)
        lock = d / "lock"
        other = _live_holder(lock)
        if other is not None:
            print(f"dev.py mutate: another run (pid {other}) is mutating {module}",
                  file=sys.stderr)
            return 1
        lock.write_text(str(os.getpid()))
        target = target_of(module, cfg)
        select = target.get("select", True) and not args.whole
        command = test_command(target)
        try:
            if select:
                # The unmutated run under coverage, shared with the other
                # modules of the target; this module's tree is a copy of
                # the tree it ran in, bytecode included.
                base, took = baseline(target, module)
                if tree.exists():
                    shutil.rmtree(tree)
                shutil.copytree(base / "tree", tree,
                                ignore=shutil.ignore_patterns(".hypothesis"))
            else:
                copy_tree(tree)
                t0 = time.monotonic()
                r = subprocess.run(shlex.split(command), cwd=tree, env=_baseline_env(tree, d),
                                   capture_output=True, text=True)
                took = time.monotonic() - t0
                if r.returncode != 0:
                    raise Unmutated(r.stdout[-3000:] + "\n" + r.stderr[-3000:])
        except Unmutated as e:
            print(e)
            print(f"dev.py mutate: the tests of {module} fail unmutated: fix them first",
                  file=sys.stderr)
            lock.unlink()
            return 1
        _forget_bytecode(tree, module)
        # The whole run's timeout; with selection it is only a backstop:
        # runtests.py stops the selected tests after their own share.
        timeout = max(cfg.get("min_timeout", 30), cfg.get("timeout_factor", 3.0) * took)
        if select:
            sel = write_selection(d, base, tree, module, took, cfg)
            command = shlex.join([sys.executable, str(HERE / "runtests.py"), str(d)])
            how = (f"selected by coverage: {len(sel['order'])} tests, "
                   f"{len(sel['lines'])} lines run by some")
        else:
            how = "all of them for every mutant"
        # A session goes on only for the same source and the same sample.
        # The session names the module by its path in the tree: a session
        # copied from another checkout would mutate that one's tree.
        stamp = (hashlib.sha256((tree / module).read_bytes()).hexdigest()
                 + f" sample={args.sample} seed={args.seed} tree={tree}")
        if args.fresh or not db_path.exists() or _read(d / "stamp") != stamp:
            init_session(tree, db_path, module, cfg, args.sample, args.seed)
            (d / "stamp").write_text(stamp)
        elif args.survivors:
            retry_survivors(tree, db_path)
        server = start_forkserver(d, tree, base / "timing.json") if select else None
        config = d / "cosmic-ray.toml"
        write_config(config, tree, module, command, timeout)
        print(f"== {module}: tests {' '.join(target['tests'])} ({took:.0f} s unmutated, "
              f"timeout {timeout:.0f} s; {how})", flush=True)
        t0, cpu0 = time.monotonic(), _children_cpu()
        try:
            r = subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), "exec",
                                str(config), str(db_path)], cwd=tree, env=_env(tree))
        finally:
            if server is not None:
                server.kill()
                server.wait()
                (d / "forkserver.sock").unlink(missing_ok=True)
        lock.unlink()
        if r.returncode != 0:
            print(f"dev.py mutate: cosmic-ray exec failed for {module}", file=sys.stderr)
            return 1
        s = report(tree, db_path, module)
        s["seconds"] = time.monotonic() - t0
        # CPU time too: on a shared machine the wall time says more about
        # the other users than about the mutants.
        print(f"   ({s['seconds']:.0f} s, {_children_cpu() - cpu0:.0f} s of CPU)")
        summary.append(s)
    if len(summary) > 1:
        print("\nmodule                                   killed survived uncovered equiv  score")
        for s in summary:
            print(f"{s['module']:<40} {s['killed']:>6} {s['survived']:>8} "
                  f"{s['not covered']:>9} {s['equivalent']:>5} {s['score']:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
