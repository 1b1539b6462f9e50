"""The per-instruction tests (test_insn_*.py) run on every engine of the core
(insn_helpers.ENGINES): the interpreter, and the block translator with the
instruction ending a block and in the middle of one."""
import pytest

from . import insn_helpers


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1].startswith("test_insn_"):
        metafunc.fixturenames.append("insn_engine")
        metafunc.parametrize("insn_engine", insn_helpers.ENGINES, indirect=True)


@pytest.fixture
def insn_engine(request):
    return request.param


@pytest.fixture(autouse=True)
def _insn_engine_in_use(request, monkeypatch):
    spec = getattr(request.node, "callspec", None)
    if spec is not None and "insn_engine" in spec.params:
        monkeypatch.setattr(insn_helpers, "ENGINE", spec.params["insn_engine"])
