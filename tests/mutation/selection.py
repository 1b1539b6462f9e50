"""Per-mutant test selection (docs/mutation.md, "Which tests a mutant runs").

Before a module's mutants, mutate.py runs its target's tests once under
coverage with one context per test, "" outside them (the timing plugin,
pytest_timing.py).  build_map turns that into selection.json in the
module's .mutants dir:

  order      every test's node id, in the order they ran
  lines      source line -> indexes in `order` of the tests that executed
             the statement the line belongs to
  whole      lines that run when the module is imported (module and class
             level, def headers: defaults, decorators), and lines that ran
             outside every test (a function called at import): a mutant
             there runs every test of the target, if the module was imported,
             those that executed some line of the module first (`touching`:
             the likeliest to fail, and pytest -x stops at the first)
  durations  node id -> seconds (setup + call + teardown), and `overhead`,
             the rest of the run (start-up, collection): for the timeout

runtests.py (cosmic-ray's test command) reads it back with tests_for.
"""
from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path


def statement_spans(source: str) -> list[tuple[int, int]]:
    """(first, last) line of each statement as a mutant can change it: a
    simple statement whole, a compound one its header only (`if` and its
    test, `for` and its iterable, decorators and `def` line), not its body."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt):
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            last = max(node.lineno, body[0].lineno - 1)
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and body[0].lineno == node.lineno:
                last = node.lineno
        else:
            last = node.end_lineno or node.lineno
        spans.append((first, last))
    return spans


def import_time_lines(source: str) -> set[int]:
    """Lines outside every function body: they run at import (a function's
    own header, decorators and defaults included)."""
    tree = ast.parse(source)
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            inside.update(range(node.body[0].lineno, node.body[-1].end_lineno + 1))
    n = len(source.splitlines())
    return {i for i in range(1, n + 1) if i not in inside}


def build_map(source: str, contexts_by_line: dict[int, set[str]], timing: dict,
              module_name: str) -> dict:
    """selection.json's content (above).  contexts_by_line: coverage's
    line -> contexts ("NODEID|setup", "NODEID|run", "NODEID|teardown";
    "" for code run outside any test, at collection)."""
    order = list(timing["order"])
    index = {nid: i for i, nid in enumerate(order)}
    ran: dict[int, set[int]] = {}
    outside = {line for line, ctxs in contexts_by_line.items() if "" in ctxs}
    for line, ctxs in contexts_by_line.items():
        for c in ctxs:
            nid = c.rpartition("|")[0]
            if nid in index:
                ran.setdefault(line, set()).add(index[nid])
    lines: dict[int, set[int]] = {}
    whole = import_time_lines(source)
    for first, last in statement_spans(source):
        span = range(first, last + 1)
        tests = set().union(*(ran.get(i, ()) for i in span))
        for i in span:
            lines.setdefault(i, set()).update(tests)
        if any(i in outside for i in span):
            whole.update(span)
    return {
        "order": order,
        "touching": sorted(set().union(*ran.values())),
        "lines": {str(k): sorted(v) for k, v in sorted(lines.items()) if v},
        "whole": sorted(whole),
        "imported": module_name in timing["modules"] or bool(outside),
        "durations": timing["durations"],
        "overhead": max(0.0, timing["seconds"] - sum(timing["durations"].values())),
    }


def changed_lines(pristine: str, mutated: str) -> set[int]:
    """Lines of pristine (1-based) that mutated changes."""
    a, b = pristine.splitlines(), mutated.splitlines()
    out: set[int] = set()
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            out.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return out


def tests_for(sel: dict, lines: set[int]) -> list[str]:
    """The node ids that a mutant of these lines must run: those that
    executed them, or every test for a line run at import (those that
    executed some line of the module first).  Fastest first (by their
    unmutated time; run order among equals): pytest -x stops at the first
    failure, so a killed mutant costs less the sooner a test fails."""
    order = sel["order"]
    durations = sel["durations"]

    def fastest_first(indexes) -> list[str]:
        return [order[i] for i in sorted(indexes, key=lambda i: (durations[order[i]], i))]

    whole = set(sel["whole"])
    if any(i in whole for i in lines):
        if not sel["imported"]:
            return []
        first = set(sel.get("touching", []))
        return fastest_first(first) + fastest_first(set(range(len(order))) - first)
    return fastest_first(set().union(*(sel["lines"].get(str(i), ()) for i in lines)))


def load(path: Path) -> dict:
    return json.loads(path.read_text())
