"""Every subcommand has examples in its epilog and help on every argument."""
import argparse

from jmig.ctl.main import build_parser


def walk(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from walk(sub, (*path, name))


def test_every_subcommand_has_examples_and_every_argument_help():
    missing = []
    for path, sub in walk(build_parser()):
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
        if not has_subcommands and "examples:\n  jmigctl " not in (sub.epilog or ""):
            missing.append(f"{' '.join(path)}: no examples")
        for a in sub._actions:
            if not a.help and not isinstance(a, argparse._SubParsersAction):
                missing.append(f"{' '.join(path)}: {a.dest} has no help")
    assert not missing, "\n".join(missing)
    assert len(list(walk(build_parser()))) >= 25
