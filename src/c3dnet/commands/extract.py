"""`c3d extract`: C3D features of many videos, one .npy each plus a manifest; resumable and shareable.

    c3d extract --weights W --out DIR [--layer fc6|fc7|pool5] [--stride 16] [--l2] [--video-mean] INPUTS...

Several processes (or `torchrun --nproc-per-node N -m c3dnet.cli extract ...`, which shards the list by rank)
may write one output folder; rerunning skips finished videos.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "extract per-clip (or per-video) C3D features of videos into .npy files with a manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders (searched recursively; a folder of frames is one video) or "
                             ".txt lists of videos")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weight file (any format `c3d` loads)")
    source.add_argument("--onnx", help="run an ONNX file from `c3d export` with ONNX Runtime instead")
    parser.add_argument("--out", required=True, help="output folder (shared safely by several processes)")
    parser.add_argument("--layer", choices=("fc6", "fc7", "pool5"), default="fc6",
                        help="feature layer (default: fc6, the paper's)")
    parser.add_argument("--stride", type=int, default=16, help="frames between clip starts (default: 16)")
    parser.add_argument("--l2", action="store_true", help="L2-normalise each row (after the mean with --video-mean)")
    parser.add_argument("--video-mean", action="store_true", help="store the mean over a video's clips (dim,)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per forward pass, across videos (default: 64 on a GPU, 32 on the CPU; a resumed "
                             "run is bit-identical with the same value)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoder processes (default: 1 on the CPU, where the model needs every core; on "
                             "CUDA one per core but two, up to 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (seconds to a minute; pays off on long extractions)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable videos (listed in OUT/failed.txt) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--break-locks", action="store_true",
                        help="first remove every lock in OUT/.locks, saying what each was (locks of a crashed run "
                             "are taken over by themselves once their heartbeat is a minute old)")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix "
                             "says (FFmpeg's -noautorotate); the manifest records what was applied")


def run(args: argparse.Namespace) -> int:
    from c3dnet.data.sources import load_video_list
    from c3dnet.engine.device import configure_for, loader_workers, select_device
    from c3dnet.engine.runner import ClipRunner
    from c3dnet.errors import ConfigError
    from c3dnet.features import ExtractOptions, extract, output_keys

    if args.stride < 1 or (args.batch_size is not None and args.batch_size < 1) or \
            (args.workers is not None and args.workers < 1):
        raise ConfigError(f"--stride, --batch-size and --workers must be >= 1, got {args.stride}, "
                          f"{args.batch_size}, {args.workers}")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    records = load_video_list(args.inputs)
    keys = output_keys(records)  # from the whole list, so every rank names files alike
    records, keys = records[rank::world], keys[rank::world]
    if args.onnx:
        from c3dnet.export import OnnxC3D

        model, device, source = OnnxC3D(args.onnx), "cpu", args.onnx
    else:
        from c3dnet.weights import load_model

        # LOCAL_RANK under torchrun; 0 otherwise, which also gives a plain "cuda" its index.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = configure_for(select_device(args.device, local_rank))
        model, source = load_model(args.weights), args.weights
    if args.compile and args.onnx:
        raise ConfigError("--compile applies to --weights; an --onnx model runs through ONNX Runtime")
    runner = ClipRunner(model, args.layer, device, amp=not args.fp32, compile=args.compile)
    workers = loader_workers(args.workers, runner.device)
    options = ExtractOptions(stride=args.stride, video_mean=args.video_mean, l2=args.l2,
                             batch_size=args.batch_size or (64 if runner.device.type == "cuda" else 32),
                             workers=workers, skip_bad=args.skip_bad,
                             weights=str(source), autorotate=args.autorotate)
    if args.break_locks:
        from c3dnet.features import OutputDir

        for line in OutputDir(args.out).break_locks():
            print(f"c3d extract: removed the lock of {line}", file=sys.stderr)
    s = extract(records, runner, args.out, options, keys=keys, progress=not args.no_progress)
    shard = f" (rank {rank} of {world})" if world > 1 else ""
    print(f"extracted {s.done} videos{shard} in {s.seconds:.1f} s ({s.frames_per_s:.0f} frames/s, "
          f"{s.clips / max(s.seconds, 1e-9):.1f} clips/s); {s.skipped} already done, {s.busy} in progress elsewhere, "
          f"{len(s.failed)} failed; manifest: {os.path.join(args.out, 'manifest.jsonl')}")
    if s.failed:
        print(f"failed videos are listed in {os.path.join(args.out, 'failed.txt')}")
    return 0
