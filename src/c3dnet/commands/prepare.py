"""`c3d prepare --data PATH --out DIR`: extract a video dataset's frames to JPEG folders with annotation lists."""

from __future__ import annotations

import argparse
import os

HELP = "extract video frames to JPEG folders + annotation lists (resumable, parallel, optional resize)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="video dataset: UCF-101 or HMDB-51 folder, or a folder with one subfolder per class")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; rerunning resumes in place")
    parser.add_argument("--split", type=int, metavar="N", help="only official split N (default: every split found)")
    parser.add_argument("--splits", metavar="DIR", help="folder with the official split files, if not inside or "
                                                        "beside --data")
    parser.add_argument("--short-side", type=int, default=128, metavar="PX",
                        help="resize frames to this short side (320x240 -> 171x128); 0 keeps the size (default 128)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                        help="parallel extraction processes (default: min(8, CPUs))")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out videos that fail to decode and bad annotation lines; all go to failed.txt")
    parser.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality 1-100 (default 95)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix "
                             "says (FFmpeg's -noautorotate)")


def run(args: argparse.Namespace) -> int:
    from c3dnet.data.prepare import prepare_dataset
    from c3dnet.errors import ConfigError

    if args.short_side < 0 or not 1 <= args.quality <= 100 or args.workers < 1:
        raise ConfigError(f"--short-side must be >= 0, --quality in 1..100 and --workers >= 1; got "
                          f"{args.short_side}, {args.quality}, {args.workers}")
    result = prepare_dataset(args.data, args.out, split=args.split, short_side=args.short_side,
                             workers=args.workers, skip_bad=args.skip_bad, quality=args.quality,
                             splits_dir=args.splits, autorotate=args.autorotate,
                             progress=not args.no_progress)
    print(result.summary() + (f"; failures listed in {result.out / 'failed.txt'}" if result.failed else ""))
    return 0
