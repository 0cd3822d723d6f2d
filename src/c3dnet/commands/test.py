"""`c3d test`: the reference test protocol (10 evenly spaced clips, centre crop, scores averaged per video)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from c3dnet.commands.common import add_fps_arguments, add_precision_arguments, fps_arguments

HELP = "test weights with the reference protocol: video top-1/top-5/mean class accuracy and clip top-1"


EPILOG = """examples:
  c3d test --weights work_dirs/c3d_ucf101_seed/last.safetensors --data data/UCF-101 --split 1
  c3d test --weights c3d_ucf101.safetensors --data data/UCF-101 --average prob --json
  torchrun --nproc_per_node 4 -m c3dnet.cli test --weights W --data data/UCF-101 --json
reports in --out (default: test_<weights name>_<data name>_split<N> beside the weights): metrics.json,
per_class_accuracy.csv, predictions.csv, confusion_matrix.png, and test_run.json (what was tested); a folder
holding the reports of another test (other weights, data, split or split files) is refused unless --overwrite"""

REPORTS = ("metrics.json", "per_class_accuracy.csv", "predictions.csv", "confusion_matrix.png")
"""What `write_test_reports` writes."""
RUN_FILE = "test_run.json"
"""Which test the reports beside it are of: weights, data, split and split files."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--weights", type=Path, required=True,
                        help="weights (native or any supported format), or an OpenVINO folder from `c3d quantize`")
    parser.add_argument("--data", type=Path, required=True, help="dataset (its test subset is scored)")
    parser.add_argument("--split", type=int, default=1, help="official split number (default 1)")
    parser.add_argument("--splits", "--splits-dir", dest="splits_dir", type=Path, default=None, metavar="DIR",
                        help="folder with the official split files, if not inside or beside --data")
    parser.add_argument("--clips", type=int, default=10, help="clips per video (default 10, the reference)")
    parser.add_argument("--average", choices=("score", "prob"), default="score",
                        help="average clip logits (score, the seed) or softmax probabilities (prob, mmaction2)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: test_<weights name>_<data name>_split<N> beside the weights)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the reports of another test in --out (without it such a folder is refused)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="videos per batch, each of --clips clips (default: 16 on a GPU, 4 on the CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data loader worker processes (default: on a GPU one per core but two, up to 16; "
                             "1 on the CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip unreadable videos instead of failing")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep videos in their coded orientation instead of turning them as their display matrix "
                             "says (FFmpeg's -noautorotate); test as the weights were trained (data.autorotate)")
    add_precision_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (seconds to a minute; pays off on large test sets)")
    add_fps_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from c3dnet.engine.reports import write_test_reports
    from c3dnet.engine.testing import TestOptions, test_weights
    from c3dnet.errors import ConfigError
    from c3dnet.fileio import atomic_write_text

    if args.clips < 1 or (args.batch_size is not None and args.batch_size < 1) or \
            (args.workers is not None and args.workers < 0):
        raise ConfigError("--clips and --batch-size must be >= 1 and --workers >= 0")
    fps, source_fps = fps_arguments(args)
    tested = _identity(args)
    out = args.out or default_out(args.weights, args.data, args.split)
    check_out(out, tested, args.overwrite)  # before the test: a refusal costs nothing
    options = TestOptions(split=args.split, splits_dir=args.splits_dir, clips=args.clips, average=args.average,
                          batch_size=args.batch_size, workers=args.workers, device=args.device,
                          precision=args.precision,
                          compile=args.compile, skip_bad=args.skip_bad, autorotate=args.autorotate,
                          progress=not args.no_progress, fps=fps, source_fps=source_fps)
    run = test_weights(args.weights, args.data, options)
    if not run.is_main:
        return 0
    result = run.result
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_FILE, json.dumps(tested, indent=1) + "\n")  # first: the reports are then its own
    write_test_reports(result, out, run.class_names, [str(v) for v in run.videos])
    if args.json:
        print(json.dumps(result.metrics()))
    else:
        print(f"videos: {result.num_videos} x {result.clips_per_video} clips, "
              f"{'logits' if args.average == 'score' else 'probabilities'} averaged")
        print(f"video top-1:          {100 * result.top1:6.2f}%")
        print(f"video top-5:          {100 * result.top5:6.2f}%")
        print(f"mean class accuracy:  {100 * result.mean_class_accuracy:6.2f}%")
        print(f"clip top-1 (1 clip):  {100 * result.clip_top1:6.2f}%")
        print(f"reports: {out}")
    return 0


def default_out(weights: Path, data: Path, split: int) -> Path:
    """`test_<weights name>_<data name>_split<N>` beside the weights: one folder per weights, data and split. The
    data name is the dataset folder's, or for a list file `<its folder>_<its name>` (lists are often all called
    test.txt)."""
    data = Path(os.path.abspath(data))
    name = f"{data.parent.name}_{data.stem}" if data.is_file() else data.name
    name = re.sub(r"[^\w.-]+", "_", name).strip("_") or "data"
    return weights.parent / f"test_{weights.stem}_{name}_split{split}"


def _identity(args: argparse.Namespace) -> dict[str, Any]:
    def where(p: Path | None) -> str | None:
        return None if p is None else os.path.abspath(p) if p.exists() else str(p)  # (a weights NAME stays one)

    return {"weights": where(args.weights), "data": where(args.data), "split": args.split,
            "splits": where(args.splits_dir)}


def check_out(out: Path, tested: dict[str, Any], overwrite: bool) -> None:
    """`ConfigError` when `out` holds the reports of a test other than `tested` (and not `overwrite`): the same
    test again replaces its own reports."""
    from c3dnet.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out must be a folder for the reports")
    if overwrite or not any((out / name).exists() for name in REPORTS):
        return
    try:
        earlier = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if earlier == tested:
        return
    if isinstance(earlier, dict):
        differ = [k for k in tested if earlier.get(k) != tested[k]]
        what = "of another test ({}; this one: {})".format(", ".join(f"{k} {earlier.get(k)}" for k in differ),
                                                          ", ".join(f"{k} {tested[k]}" for k in differ))
    else:
        what = f"of an earlier test (without {RUN_FILE} to say which)"
    raise ConfigError(f"{out}: holds the reports {what}; pass --overwrite to replace them, or choose another --out")

