"""`c3d test`: the reference test protocol (10 evenly spaced clips, centre crop, scores averaged per video)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from c3dnet.commands.common import add_fps_arguments, fps_arguments

HELP = "test weights with the reference protocol: video top-1/top-5/mean class accuracy and clip top-1"


EPILOG = """examples:
  c3d test --weights work_dirs/c3d_ucf101_seed/last.safetensors --data data/UCF-101 --split 1
  c3d test --weights c3d_ucf101.safetensors --data data/UCF-101 --average prob --json
  torchrun --nproc_per_node 4 -m c3dnet.cli test --weights W --data data/UCF-101 --json
reports in --out: metrics.json, per_class_accuracy.csv, predictions.csv, confusion_matrix.png"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--weights", type=Path, required=True, help="weights (native or any supported format)")
    parser.add_argument("--data", type=Path, required=True, help="dataset (its test subset is scored)")
    parser.add_argument("--split", type=int, default=1, help="official split number (default 1)")
    parser.add_argument("--splits", "--splits-dir", dest="splits_dir", type=Path, default=None, metavar="DIR",
                        help="folder with the official split files, if not inside or beside --data")
    parser.add_argument("--clips", type=int, default=10, help="clips per video (default 10, the reference)")
    parser.add_argument("--average", choices=("score", "prob"), default="score",
                        help="average clip logits (score, the seed) or softmax probabilities (prob, mmaction2)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: test_<weights name>_split<N> beside the weights)")
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
    parser.add_argument("--fp32", "--no-amp", dest="fp32", action="store_true",
                        help="no bf16 autocast on CUDA (--no-amp: the same)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (seconds to a minute; pays off on large test sets)")
    add_fps_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from c3dnet.engine.reports import write_test_reports
    from c3dnet.engine.testing import TestOptions, test_weights
    from c3dnet.errors import ConfigError

    if args.clips < 1 or (args.batch_size is not None and args.batch_size < 1) or \
            (args.workers is not None and args.workers < 0):
        raise ConfigError("--clips and --batch-size must be >= 1 and --workers >= 0")
    fps, source_fps = fps_arguments(args)
    options = TestOptions(split=args.split, splits_dir=args.splits_dir, clips=args.clips, average=args.average,
                          batch_size=args.batch_size, workers=args.workers, device=args.device, amp=not args.fp32,
                          compile=args.compile, skip_bad=args.skip_bad, autorotate=args.autorotate,
                          progress=not args.no_progress, fps=fps, source_fps=source_fps)
    run = test_weights(args.weights, args.data, options)
    if not run.is_main:
        return 0
    result = run.result
    out = args.out or args.weights.parent / f"test_{args.weights.stem}_split{args.split}"
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
