"""The `c3d` command: one argparse entry point, one module per subcommand in `c3dnet.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and keeps
its heavy imports inside `run`, so `c3d --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from c3dnet.errors import C3DError
from c3dnet.log import setup_logging

# Subcommand name -> module. A plain dict is the whole registry.
COMMANDS: dict[str, str] = {
    "demo": "c3dnet.commands.demo",
    "synth": "c3dnet.commands.synth",
    "prepare": "c3dnet.commands.prepare",
    "train": "c3dnet.commands.train",
    "test": "c3dnet.commands.test",
    "predict": "c3dnet.commands.predict",
    "extract": "c3dnet.commands.extract",
    "pack": "c3dnet.commands.pack",
    "serve": "c3dnet.commands.serve",
    "probe": "c3dnet.commands.probe",
    "export": "c3dnet.commands.export",
    "quantize": "c3dnet.commands.quantize",
    "lite": "c3dnet.commands.lite",
    "convert": "c3dnet.commands.convert",
    "info": "c3dnet.commands.info",
    "weights": "c3dnet.commands.weights",
}


def _verbosity() -> argparse.ArgumentParser:
    """-v / -q, accepted before or after the subcommand (a parent of both parsers; SUPPRESS keeps the subcommand's
    default from overwriting a value given before it)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parent.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only")
    return parent


def build_parser(prog: str = "c3d") -> argparse.ArgumentParser:
    from c3dnet.version import __version__

    verbosity = _verbosity()
    parser = argparse.ArgumentParser(prog=prog, description="C3D video features: train, test, extract, export.",
                                     parents=[verbosity])
    parser.add_argument("--version", action="version", version=f"c3dnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[verbosity])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices.get(command)
    return None


def _set_keys() -> list[str]:
    """Every `--set` key of a training recipe, e.g. "optim.epochs"."""
    from dataclasses import fields

    from c3dnet.engine.config import TrainConfig

    cfg = TrainConfig()
    return [f"{s.name}.{f.name}" for s in fields(cfg) for f in fields(getattr(cfg, s.name))]


def suggest(unknown: str, options: list[str], set_keys: list[str]) -> str | None:
    """The nearest flag of the command, or the `--set` key an unknown flag names (`--epochs` -> optim.epochs)."""
    import difflib

    flag = unknown.split("=", 1)[0]
    near = difflib.get_close_matches(flag, options, n=1, cutoff=0.75)
    if near:
        return near[0]
    name = flag.lstrip("-").replace("-", "_")
    by_field = [k for k in set_keys if k.split(".", 1)[1] == name]
    if not by_field:
        by_field = difflib.get_close_matches(name, [k.split(".", 1)[1] for k in set_keys], n=1, cutoff=0.8)
        by_field = [k for k in set_keys if k.split(".", 1)[1] in by_field]
    return f"--set {by_field[0]}=..." if by_field else None


def main(argv: Sequence[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) if argv is None and sys.argv[0] else "c3d"
    parser = build_parser(prog if prog in ("c3d", "c3dnet") else "c3d")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = _subparser(parser, getattr(args, "command", None)) or parser
        options = [o for a in sub._actions for o in a.option_strings]  # noqa: SLF001
        takes_set = any("--set" in a.option_strings for a in sub._actions)  # noqa: SLF001
        hints = []
        for u in (u for u in unknown if u.startswith("-")):
            hint = suggest(u, options, _set_keys() if takes_set else [])
            hints.append(f"{u} (did you mean {hint}?)" if hint else u)
        sub.error(f"unrecognized arguments: {' '.join(hints or unknown)}")
    level = logging.DEBUG if getattr(args, "verbose", False) else \
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    setup_logging(level)
    try:
        return int(args._run(args) or 0)
    except C3DError as e:
        print(f"c3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"c3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
