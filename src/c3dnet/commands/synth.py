"""`c3d synth OUT`: write the synthetic time-reversal action dataset in the UCF-101 layout."""

from __future__ import annotations

import argparse

HELP = "generate the synthetic action dataset (time-reversed class pairs) in the UCF-101 layout"


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (or a single number for a square) -> (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 40x40 (height x width), got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 16 or any(v % 2 for v in values):
        raise argparse.ArgumentTypeError(f"size must be HxW with even values >= 16, got {text!r}")
    return values[0], values[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from c3dnet.data.synthetic import PAIRS, SynthParams

    d = SynthParams()
    parser.add_argument("out", help="output folder (created; reused as is if it holds the same dataset)")
    parser.add_argument("--pairs", type=int, default=d.num_pairs,
                        help=f"time-reversed class pairs, 1..{len(PAIRS)} (default {d.num_pairs}): "
                             + ", ".join(f"{p.forward}/{p.backward}" for p in PAIRS))
    parser.add_argument("--videos-per-class", type=int, default=d.videos_per_class,
                        help=f"videos of each class, a multiple of --groups (default {d.videos_per_class})")
    parser.add_argument("--groups", type=int, default=d.groups, help=f"groups gXX per class (default {d.groups})")
    parser.add_argument("--test-groups", type=int, default=d.test_groups,
                        help=f"groups g01.. held out as the test split (default {d.test_groups})")
    parser.add_argument("--frames", type=int, default=d.frames,
                        help=f"frames per video, >= 17; 25, 45, 65, ... keep test clips mirror-exact "
                             f"(default {d.frames})")
    parser.add_argument("--size", type=parse_size, default=(d.height, d.width), metavar="HxW",
                        help=f"frame size (default {d.height}x{d.width})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--no-pair-test", action="store_true",
                        help="draw the test videos of each pair's second class independently instead of as the "
                             "exact reverses of the first class's")
    parser.add_argument("--pair-train", action="store_true",
                        help="make the training videos exact reverse pairs too")
    parser.add_argument("--quality", type=int, default=d.quality, help="MPEG-4 quantiser, 1 (best) .. 31")
    parser.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default: one per 500 videos, up to 4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic dataset with other parameters found in OUT")


def run(args: argparse.Namespace) -> int:
    from c3dnet.data.synthetic import SynthParams, generate_synthetic, video_specs
    from c3dnet.errors import ConfigError

    try:
        params = SynthParams(
            num_pairs=args.pairs,
            videos_per_class=args.videos_per_class,
            groups=args.groups,
            test_groups=args.test_groups,
            frames=args.frames,
            height=args.size[0],
            width=args.size[1],
            seed=args.seed,
            pair_test=not args.no_pair_test,
            pair_train=args.pair_train,
            quality=args.quality,
        )
    except ValueError as e:
        raise ConfigError(f"c3d synth options: {e}") from e
    root = generate_synthetic(args.out, params, workers=args.workers, overwrite=args.overwrite)
    specs = video_specs(params)
    num_test = sum(s.test for s in specs)
    print(f"{root}: {2 * params.num_pairs} classes, {len(specs) - num_test} train / {num_test} test videos "
          f"({params.height}x{params.width}, {params.frames} frames); use it as --data {root}")
    return 0
