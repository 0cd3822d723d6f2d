"""`c3d predict --weights W VIDEO...`: the most probable classes of each video (10-clip average).

    c3d predict --weights W VIDEO... [--top-k 5] [--clips 10] [--json] [--timeline DIR] [--onnx model.onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from c3dnet.commands.common import add_fps_arguments, add_precision_arguments, fps_arguments

HELP = "classify videos: top-k classes from the average of 10 clips, optional per-clip timeline (JSON + PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders or .txt lists of videos")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weight file (any format `c3d` loads), or an OpenVINO folder from "
                                         "`c3d quantize`")
    source.add_argument("--onnx", help="run an ONNX file from `c3d export` with ONNX Runtime instead")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per video (default: 5)")
    parser.add_argument("--clips", type=int, default=10, help="evenly spaced clips averaged per video (default: 10)")
    parser.add_argument("--average", choices=("score", "prob"), default="score",
                        help="softmax of the mean clip logits (score, the reference's; default) or mean of the clip "
                             "probabilities (prob, mmaction2's), as in `c3d test`")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"video", "top_k": [{"label", "index", "prob"}]}')
    parser.add_argument("--timeline", metavar="DIR",
                        help="also write per-clip predictions over time (<video>.timeline.json and .png) here")
    parser.add_argument("--stride", type=int, default=16, help="frames between timeline clips (default: 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    add_precision_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true", help="report unreadable videos and go on")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the videos")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix "
                             "says (FFmpeg's -noautorotate)")
    add_fps_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from c3dnet.data.sources import find_videos
    from c3dnet.errors import ConfigError, DataError, printable
    from c3dnet.features import output_keys
    from c3dnet.inference.backends import load_backend
    from c3dnet.inference.prediction import class_labels, predict_timeline, predict_video, save_timeline
    from c3dnet.inference.runner import ClipRunner
    from c3dnet.log import progress_bar

    if args.top_k < 1 or args.clips < 1 or args.stride < 1:
        raise ConfigError(f"--top-k, --clips and --stride must be >= 1, got {args.top_k}, {args.clips}, "
                          f"{args.stride}")
    if args.timeline:
        try:
            Path(args.timeline).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--timeline {args.timeline}: cannot create this folder ({e.strerror or e}); "
                              "choose another") from None
    fps, source_fps = fps_arguments(args)
    found = find_videos(args.videos, skip_bad=args.skip_bad)
    for item in found.skipped:
        print(f"c3d predict: skipped: {item.where}: {item.reason}", file=sys.stderr)
    records = found.records
    backend = load_backend(args.onnx or args.weights, args.device, args.precision,
                           progress=not args.no_progress, local_rank=0)  # a name may download
    runner = ClipRunner(backend, "logits")
    names = class_labels(backend.class_names, backend.num_classes)
    results, failed = [], 0
    bar = progress_bar(len(records), "predict", "video", enabled=not args.no_progress and len(records) > 1)
    for record, key in zip(records, output_keys(records)):
        bar.update(1)
        try:
            prediction = predict_video(runner, record.path, names, args.clips, args.average, args.autorotate,
                                       fps, source_fps)
            if args.timeline:
                timeline = predict_timeline(runner, record.path, names, args.stride, autorotate=args.autorotate,
                                            fps=fps, source_fps=source_fps)
                save_timeline(timeline, args.timeline, key, args.top_k)
        except DataError as e:
            if not args.skip_bad:
                raise
            failed += 1
            print(f"c3d predict: skipped: {e}", file=sys.stderr)
            continue
        results.append(prediction.to_dict(args.top_k))
        if not args.json:
            top = ", ".join(f"{printable(c['label'])} {100 * c['prob']:.1f}%" for c in results[-1]["top_k"])
            print(f"{printable(record.path)}: {top}")
    bar.close()
    if args.json:
        print(json.dumps(results, indent=2))
    if args.timeline and results:
        print(f"timelines written to {args.timeline}", file=sys.stderr if args.json else sys.stdout)
    return 1 if (failed or found.skipped) and not results else 0
