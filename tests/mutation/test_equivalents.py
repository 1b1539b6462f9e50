"""equivalent.toml's entries name mutants by their line's code, not its
number: a judgement stays attached to its mutant as the module grows."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate  # noqa: E402

ENTRY = {"module": "jmig/proto/wire.py", "operator": "NumberReplacer", "line": 14, "col": 12,
         "code": "RECV_SIZE = 1 << 20", "reason": "the same bytes, cut otherwise"}


def key(**kw):
    k = {"module": "jmig/proto/wire.py", "operator": "NumberReplacer", "line": 14, "col": 12,
         "variant": 0, "code": "RECV_SIZE = 1 << 20"}
    return {**k, **kw}


def test_an_entry_matches_its_mutant_wherever_the_line_moved():
    assert mutate.equivalent_reason(key(), [ENTRY]) == ENTRY["reason"]
    assert mutate.equivalent_reason(key(line=15), [ENTRY]) == ENTRY["reason"]


def test_an_entry_does_not_match_another_mutant_or_a_changed_line():
    for other in (key(code="RECV_SIZE = 1 << 21"), key(col=17), key(variant=1),
                  key(operator="ReplaceBinaryOperator_Add_Sub"), key(module="jmig/proto/frames.py")):
        assert mutate.equivalent_reason(other, [ENTRY]) is None


def test_every_entry_of_equivalent_toml_says_why():
    entries = mutate.load_equivalents()
    assert entries
    for e in entries:
        assert {"module", "operator", "code", "reason"} <= set(e), e
        assert len(e["reason"].split()) >= 5, e
