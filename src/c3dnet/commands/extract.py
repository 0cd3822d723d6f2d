"""`c3d extract`: C3D features of many videos, one .npy each plus a manifest; resumable and shareable.

    c3d extract --weights W --out DIR [--layer fc6|fc7|pool5] [--stride 16] [--fps F]
                [--segments S [--segment-rule uniform|sultani] | --video-mean] [--l2 none|clip|output] INPUTS...

Several processes (or `torchrun --nproc-per-node N -m c3dnet.cli extract ...`, which shards the list by rank)
may write one output folder; rerunning skips finished videos.
"""

from __future__ import annotations

import argparse
import os
import sys

from c3dnet.commands.common import add_fps_arguments, add_pca_arguments, add_precision_arguments, fps_arguments
from c3dnet.commands.extract_ray import add_ray_arguments, run_ray

HELP = "extract per-clip, per-segment or per-video C3D features of videos into .npy files with a manifest"

EPILOG = """rows written per video (one .npy each, and <video>.times.csv with each row's first/last source frame and
start/end seconds):
  default          one row per clip: clips start every --stride frames (of the --fps frames, with --fps)
  --segments S     S rows; "uniform" (default): segment k is the mean of clips [b_k, b_k+1),
                   b_k = floor(k*N/S + 1/2) for N clips (a segment with no clip takes clip min(b_k, N-1));
                   "sultani": UCF-Crime's released MATLAB code: 1-based b = round(linspace(1, N, S+1)), segment k
                   = mean of clips b_k .. b_k+1 - 1 (clip b_k when empty); the last clip is never used
  --video-mean     one row (dim,): the mean of all clips
  --l2 none|clip|output   clip: each clip row before pooling; output: each written row (after the mean);
                   default: output with --segments, none otherwise; --l2 alone means output
  --crops 5|10     (rows, crops, dim), or (crops, rows, dim) with --crop-axis first, (crops, dim) with
                   --video-mean: segments, mean and L2 apply to each crop alone; the times file keeps a row per row
  --pca FILE       each written row (after pooling and L2) becomes (x - x_mean) @ U[:, :--pca-dim]
example: 10 clips, --segments 4: uniform b = 0,3,5,8,10 -> clips {0,1,2} {3,4} {5,6,7} {8,9};
         sultani b = 1,3,6,8,10 -> clips {1,2} {3,4,5} {6,7} {8,9} (1-based; clip 10 unused)
recipes:
  UCF-Crime:     c3d extract --weights W --fps 30 --segments 32 --segment-rule sultani --out feats videos/
  localisation:  c3d extract --weights W --layer fc7 --stride 8 --out feats videos/
  video means:   c3d extract --weights W --video-mean --l2 --out feats videos/
  RTFM / MGFN:   c3d extract --weights W --fps 30 --crops 10 --out feats videos/      (T, 10, 4096) per video
  UR-DMU:        c3d extract --weights W --crops 10 --crop-order urdmu --crop-axis first --out feats videos/
  ActivityNet:   c3d extract --weights W --layer fc7 --stride 8 --pca PCA_activitynet_v1-3.hdf5 --out feats videos/
then `c3d pack feats --to feats.h5` (or .txt folder / .pt folder) for downstream code"""


def _l2_mode(text: str) -> str:
    if text not in ("none", "clip", "output"):
        raise argparse.ArgumentTypeError(
            f"takes none, clip or output, and {text!r} is not one: write `--l2 output` (what `--l2` alone means) "
            "when an input follows it")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders (searched recursively; a folder of frames is one video) or "
                             ".txt lists of videos")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weight file (any format `c3d` loads), or an OpenVINO folder from "
                                         "`c3d quantize`")
    source.add_argument("--onnx", help="run an ONNX file from `c3d export` with ONNX Runtime instead")
    parser.add_argument("--out", required=True, help="output folder (shared safely by several processes)")
    parser.add_argument("--layer", choices=("fc6", "fc7", "pool5"), default="fc6",
                        help="feature layer (default: fc6, the paper's)")
    parser.add_argument("--stride", type=int, default=16, help="frames between clip starts (default: 16)")
    parser.add_argument("--l2", nargs="?", const="output", default=None, type=_l2_mode, metavar="none|clip|output",
                        help="L2 normalisation: clip (each clip row, before pooling), output (each written row, "
                             "after the segment or video mean) or none; --l2 alone: output (default: output with "
                             "--segments, none otherwise)")
    parser.add_argument("--video-mean", action="store_true", help="store the mean over a video's clips (dim,)")
    parser.add_argument("--segments", type=int, default=None, metavar="S",
                        help="store S segment rows per video, each the mean of its clips (see below)")
    parser.add_argument("--segment-rule", choices=("uniform", "sultani"), default="uniform",
                        help="segment boundaries: uniform (default) or sultani (UCF-Crime's MATLAB code)")
    parser.add_argument("--crops", default="center", metavar="center|5|10",
                        help="views of each clip, all from one decode and in one batch: the centre crop (default), "
                             "5 (torchvision's five_crop: four corners, centre) or 10 (the five, then the same five "
                             "of the horizontally mirrored frames); rows become (T, crops, dim), and --batch-size "
                             "counts crops, rounded down to whole clips")
    parser.add_argument("--crop-order", default=None, metavar="tencrop|urdmu",
                        help="with --crops: tencrop (torchvision's TenCrop order: corners, then centre; default) or "
                             "urdmu (top-left, top-right, centre, bottom-left, bottom-right); recorded in the manifest")
    parser.add_argument("--crop-axis", default=None, metavar="second|first",
                        help="with --crops: second, (T, crops, dim) (default, RTFM's), or first, (crops, T, dim) "
                             "(UR-DMU's)")
    add_pca_arguments(parser, "each written row (after pooling and L2)")
    add_fps_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per forward pass, across videos (default: 64 on a GPU, 32 on the CPU; a resumed "
                             "run is bit-identical with the same value)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoder processes (default: 1 on the CPU, where the model needs every core; on "
                             "CUDA one per core but two, up to 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    add_precision_arguments(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (seconds to a minute; pays off on long extractions)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable videos, and inputs that cannot be listed (symlink loops, unreadable "
                             "folders), each listed in OUT/failed.txt, instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--break-locks", action="store_true",
                        help="first remove every lock in OUT/.locks, saying what each was (locks of a crashed run "
                             "are taken over by themselves once their heartbeat is a minute old)")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix "
                             "says (FFmpeg's -noautorotate); the manifest records what was applied")
    add_ray_arguments(parser)


def recipe_of(args: argparse.Namespace):  # -> FeatureRecipe
    """The extraction's recipe from the flags (`ConfigError` saying what is allowed)."""
    from c3dnet.inference.recipe import FeatureRecipe

    return FeatureRecipe(layer=args.layer, stride=args.stride, fps=args.fps, video_mean=args.video_mean,
                         segments=args.segments or 0, segment_rule=args.segment_rule, l2=args.l2,
                         crops=args.crops, crop_order=args.crop_order, crop_axis=args.crop_axis, pca=args.pca,
                         pca_dim=args.pca_dim)


def run(args: argparse.Namespace) -> int:
    from c3dnet.data.sources import find_videos
    from c3dnet.device import loader_workers
    from c3dnet.distinfo import DistInfo
    from c3dnet.errors import ConfigError
    from c3dnet.features import ExtractOptions, OutputDir, extract, output_keys
    from c3dnet.inference.backends import load_backend
    from c3dnet.inference.runner import ClipRunner

    if (args.batch_size is not None and args.batch_size < 1) or (args.workers is not None and args.workers < 1):
        raise ConfigError(f"--batch-size and --workers must be >= 1, got {args.batch_size}, {args.workers}")
    if args.segments is not None and args.segments < 1:
        raise ConfigError(f"--segments must be a number of segments >= 1 (leave it out for one row per clip), got "
                          f"{args.segments}")
    recipe = recipe_of(args)
    _, source_fps = fps_arguments(args)
    dist = DistInfo.from_env()
    found = find_videos(args.inputs, skip_bad=args.skip_bad)  # before the model: a bad input costs no loading
    keys = output_keys(found.records)  # from the whole list, so every rank names files alike
    records, keys = found.records[dist.rank::dist.world_size], keys[dist.rank::dist.world_size]
    if args.ray is not None:  # the cluster's actors load the model
        print_summary(run_ray(args, recipe, source_fps, found, keys), args.out, found, "")
        return 0
    backend = load_backend(args.onnx or args.weights, args.device, args.precision,
                           compile=args.compile, progress=not args.no_progress,
                           local_rank=dist.local_rank)
    runner = ClipRunner(backend, recipe.layer)
    options = ExtractOptions(recipe, source_fps=source_fps,
                             batch_size=args.batch_size or (64 if runner.device.type == "cuda" else 32),
                             workers=loader_workers(args.workers, runner.device), skip_bad=args.skip_bad,
                             weights=backend.source, autorotate=args.autorotate)
    out = OutputDir(args.out)
    if args.break_locks:
        for line in out.break_locks():
            print(f"c3d extract: removed the lock of {line}", file=sys.stderr)
    out.create().write_unlisted(found.skipped, found.searched)  # into failed.txt, with the videos that fail
    s = extract(records, runner, args.out, options, keys=keys, progress=not args.no_progress)
    print_summary(s, args.out, found, f" (rank {dist.rank} of {dist.world_size})" if dist.is_distributed else "")
    return 0


def print_summary(s, out: str, found, shard: str) -> None:  # (ExtractSummary, str, VideoList, str)
    """The run's one line (and where its failures are listed)."""
    unlisted = f" (and {len(found.skipped)} inputs that cannot be listed)" if found.skipped else ""
    print(f"extracted {s.done} videos{shard} in {s.seconds:.1f} s ({s.frames_per_s:.0f} frames/s, "
          f"{s.clips / max(s.seconds, 1e-9):.1f} clips/s); {s.skipped} already done, {s.busy} in progress elsewhere, "
          f"{len(s.failed)} failed{unlisted}; manifest: {os.path.join(out, 'manifest.jsonl')}")
    if s.failed or found.skipped:
        print(f"failed videos are listed in {os.path.join(out, 'failed.txt')}")
