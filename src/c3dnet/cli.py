"""The `c3d` command: one argparse entry point, one module per subcommand in `c3dnet.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and keeps
its heavy imports inside `run`, so `c3d --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
    "probe": "c3dnet.commands.probe",
    "export": "c3dnet.commands.export",
    "lite": "c3dnet.commands.lite",
    "convert": "c3dnet.commands.convert",
    "info": "c3dnet.commands.info",
}


def build_parser() -> argparse.ArgumentParser:
    from c3dnet import __version__

    parser = argparse.ArgumentParser(prog="c3d", description="C3D video features: train, test, extract, export.")
    parser.add_argument("--version", action="version", version=f"c3dnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
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
