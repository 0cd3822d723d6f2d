"""Options several commands share: sampling videos at a fixed frame rate (`--fps`, `--source-fps`), the
numeric precision of inference (`--precision`, `--fp32`) and ActivityNet's PCA of features (`--pca`, `--pca-dim`)."""

from __future__ import annotations

import argparse
from fractions import Fraction

FPS_HELP = ("sample each video at F frames per second by presentation time before forming clips: output frame k "
            "is the source frame on screen at time k/F (frames repeat when F is above the video's rate); "
            "F like 30, 29.97 or 30000/1001 (default: the video's own frames)")


def add_fps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fps", metavar="F", default=None, help=FPS_HELP)
    parser.add_argument("--source-fps", metavar="F", default=None,
                        help="with --fps: the frame rate of frame folders that hold no timestamps (`c3d prepare` "
                             "records them in each folder's timing.json)")


def fps_arguments(args: argparse.Namespace) -> tuple[Fraction | None, Fraction | None]:
    """(--fps, --source-fps) as exact fractions, or None; `ConfigError` saying what is allowed."""
    from c3dnet.data.timing import parse_rates

    return parse_rates(args.fps, args.source_fps)


PRECISION_HELP = ("numeric precision of inference: auto (bf16 autocast on CUDA, fp32 on the CPU; the default), fp32, "
                  "bf16 (autocast, on the CPU too: fast where it has AMX or AVX512-BF16, slower than fp32 where not), "
                  "int8 (a model from `c3d quantize`, given as --weights DIR, runs in int8 by itself)")


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """`--precision auto|fp32|bf16|int8`, and `--fp32` (and `--no-amp`) as the old spelling of `--precision fp32`."""
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto", help=PRECISION_HELP)
    parser.add_argument("--fp32", "--no-amp", dest="precision", action="store_const", const="fp32",
                        help="the same as --precision fp32 (no bf16 autocast on CUDA)")


def add_pca_arguments(parser: argparse.ArgumentParser, rows: str) -> None:
    """`--pca FILE` and `--pca-dim K` (`c3d extract`, `c3d pack`): `rows` says which rows the PCA reduces."""
    parser.add_argument("--pca", default=None, metavar="FILE",
                        help=f"reduce {rows} with this PCA file: ActivityNet's HDF5 (data/U, data/S, data/x_mean) or "
                             "an .npz of those names; row = (x - x_mean) @ U[:, :--pca-dim]")
    parser.add_argument("--pca-dim", type=int, default=None, metavar="K",
                        help="with --pca: the components kept (default: 500, ActivityNet's)")
