"""The per-mutant test selection of dev.py mutate (selection.py): which
tests a mutant of a given line must run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection  # noqa: E402

SOURCE = '''\
LIMIT = 4096


def check(n, strict=False):
    """Refuse n over the limit."""
    if (n > LIMIT
            or strict and n == LIMIT):
        raise ValueError(
            n + 1)
    return n


def unused(x):
    return x << 1
'''

A, B, C = "t.py::test_a", "t.py::test_b[x y-1]", "t.py::test_c"
# What coverage saw: test_a runs the check without raising, test_b[...]
# raises (its coverage lists only the first line of the raise), test_c
# ran nothing of the module; the module body ran at collection ("").
CONTEXTS = {1: {""}, 4: {""}, 6: {A + "|run", B + "|run"}, 8: {B + "|run"},
            10: {A + "|run"}, 13: {""}}
TIMING = {"order": [C, A, B], "durations": {A: 0.5, B: 0.25, C: 2.0}, "seconds": 5.0,
          "modules": ["jmig", "jmig.m"]}


def sel(imported=True):
    # Not imported: neither in sys.modules at the end nor run at all.
    timing = dict(TIMING, modules=["jmig.m"] if imported else [])
    ctx = CONTEXTS if imported else {k: v - {""} for k, v in CONTEXTS.items() if v - {""}}
    return selection.build_map(SOURCE, ctx, timing, "jmig.m")


def test_a_line_runs_the_tests_that_executed_its_statement_fastest_first():
    assert selection.tests_for(sel(), {10}) == [A]
    assert selection.tests_for(sel(), {6}) == [B, A]          # 0.25 s before 0.5 s


def test_tests_that_took_as_long_run_in_run_order():
    equal = selection.build_map(SOURCE, CONTEXTS, dict(TIMING, durations={A: 1, B: 1, C: 1}),
                                "jmig.m")
    assert selection.tests_for(equal, {6}) == [A, B]


def test_every_line_of_a_statement_counts_as_the_statement():
    # The `or` on line 7 belongs to the `if` of line 6; the `n + 1` on line 9
    # to the raise of line 8, whose coverage names only line 8.
    assert selection.tests_for(sel(), {7}) == [B, A]
    assert selection.tests_for(sel(), {9}) == [B]


def test_a_line_no_test_executes_selects_nothing():
    assert selection.tests_for(sel(), {14}) == []


def test_a_line_run_at_import_runs_every_test_if_the_module_was_imported():
    # LIMIT, and the default of `strict` in the def line: set at import.
    # Those that ran some line of the module first (pytest -x stops at the
    # first failure), each group fastest first.
    for line in (1, 4):
        assert selection.tests_for(sel(), {line}) == [B, A, C]
        assert selection.tests_for(sel(imported=False), {line}) == []


def test_the_overhead_is_the_run_time_outside_the_tests():
    assert sel()["overhead"] == 5.0 - 2.75


def test_a_line_run_outside_every_test_runs_every_test():
    # unused() called at import (line 14 in the "" context): its mutants may
    # change what every test sees.
    ctx = {**CONTEXTS, 14: {""}}
    sel = selection.build_map(SOURCE, ctx, dict(TIMING, modules=[]), "jmig.m")
    assert selection.tests_for(sel, {14}) == [B, A, C]


def test_changed_lines_are_those_the_mutant_rewrites():
    mutated = SOURCE.replace("n > LIMIT", "n >= LIMIT")
    assert selection.changed_lines(SOURCE, mutated) == {6}
    assert selection.changed_lines(SOURCE, SOURCE) == set()
    assert selection.changed_lines(SOURCE, SOURCE.replace("    return n\n", "")) == {10}
