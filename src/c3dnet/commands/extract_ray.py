"""`c3d extract --ray`: the flags of an extraction across a Ray cluster, and its run (`features.ray_extract`)."""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoList
    from c3dnet.features.options import ExtractSummary
    from c3dnet.inference.recipe import FeatureRecipe


def _count_or_auto(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"takes a number >= 1 or auto, and {text!r} is not one")
    return int(text)


def _at_least(low: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"takes a number >= {low:g}, and {text!r} is not one")
        return value
    return parse


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("on a Ray cluster (see README, On a cluster)")
    group.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|local|ADDRESS",
                       help="decode on the cluster's CPUs and run the model on its actors; this process writes "
                            "the same outputs as without --ray. auto (--ray alone): the cluster of `ray start` or "
                            "RAY_ADDRESS (this machine alone when there is none); local: this machine alone; or the "
                            "head's address. --out (and the weights and videos) must be on a disk every node sees; "
                            "unreadable videos go to failed.txt as with --skip-bad")
    group.add_argument("--ray-gpus-per-actor", type=_at_least(0), default=None, metavar="G",
                       help="GPUs of each model actor (default: 1 when the cluster has GPUs; 0: CPU actors)")
    group.add_argument("--ray-actors", type=_count_or_auto, default=None, metavar="N|auto",
                       help="model actors at most (default auto: one per GPU, or one per node on CPUs)")
    group.add_argument("--ray-decoders", type=_count_or_auto, default=None, metavar="N|auto",
                       help="decode tasks at a time (default auto: one per CPU left beside GPU actors, or one per "
                            "node on CPUs)")
    group.add_argument("--ray-cpus-per-actor", type=_at_least(0.01), default=None, metavar="C",
                       help="CPUs each model actor reserves, and its threads (default: 1 beside a GPU; on CPUs the "
                            "smallest node's CPUs but half of one)")


def run_ray(args: argparse.Namespace, recipe: FeatureRecipe, source_fps: Fraction | None, found: VideoList,
            keys: list[str]) -> ExtractSummary:
    """Extract the videos found on the cluster `--ray` names; the caller reports the summary."""
    from c3dnet.distinfo import DistInfo
    from c3dnet.errors import ConfigError
    from c3dnet.features import ExtractOptions, OutputDir
    from c3dnet.features.ray_extract import ModelSpec, RayOptions, extract_ray

    if DistInfo.from_env().is_distributed:
        raise ConfigError("--ray runs one driver for the whole cluster: start it once, not under torchrun")
    if args.ray not in ("auto", "local") and os.path.exists(args.ray):
        raise ConfigError(f"--ray took {args.ray!r}, an input, for the cluster's address: write --ray auto (or the "
                          "head's address) before the inputs, or put --ray after them")
    if args.workers is not None:
        raise ConfigError("--workers counts decoder processes of this machine; on a Ray cluster give --ray-decoders")
    gpus = args.ray_gpus_per_actor
    if args.device == "cpu":
        if gpus:
            raise ConfigError(f"--device cpu with --ray-gpus-per-actor {gpus:g}: give one of them")
        gpus = 0.0
    elif args.device.startswith("cuda") and gpus is None:
        gpus = 1.0
    ray_options = RayOptions(args.ray, gpus, args.ray_actors, args.ray_decoders, args.ray_cpus_per_actor)
    weights = args.onnx or args.weights
    spec = ModelSpec(weights, recipe.layer, args.precision, args.compile)
    # 0: a plain run's batch size on the actors' device (64 on GPUs, 32 on CPUs): the same kernels, the same bits
    options = ExtractOptions(recipe, source_fps=source_fps, batch_size=args.batch_size or 0, skip_bad=True,
                             weights=str(weights),
                             autorotate=args.autorotate)
    out = OutputDir(args.out)
    if args.break_locks:
        for line in out.break_locks():
            print(f"c3d extract: removed the lock of {line}", file=sys.stderr)
    out.create().write_unlisted(found.skipped, found.searched)  # into failed.txt, with the videos that fail
    return extract_ray(found.records, spec, args.out, options, ray_options, keys=keys, progress=not args.no_progress)
