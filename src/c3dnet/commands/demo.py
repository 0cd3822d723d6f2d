"""`c3d demo`: the paper's first claim on the CPU in minutes: a 3D C3D against its 2D twin on synthetic motion."""

from __future__ import annotations

import argparse

HELP = "train and test a small 3D C3D and its 2D twin on synthetic time-reversed actions, side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default="work_dirs/demo",
                        help="dataset, checkpoints and the report demo.json / demo.md (default: work_dirs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="one class pair (MoveDown/MoveUp) and a sixth of the training clips, for a quick look")
    parser.add_argument("--device", default="cpu", help="cpu (default: the claim is about a CPU), auto or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the training recipe of both models, e.g. --set optim.epochs=30")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    import json

    from c3dnet.demo import format_table, report_paths, run_demo

    report = run_demo(args.work_dir, quick=args.quick, device=args.device, overrides=args.overrides)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        json_path, md_path = report_paths(args.work_dir, args.quick)
        print(format_table(report))
        print(f"report: {md_path} (the table as Markdown) and {json_path} (every figure)")
    return 0
