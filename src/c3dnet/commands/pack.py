"""`c3d pack FEATURES_DIR --to OUT [--format h5|txt|pt]`: extracted features as one HDF5 file or a folder."""

from __future__ import annotations

import argparse

HELP = "pack the per-video features of `c3d extract` into one HDF5 file, or a folder of .txt (UCF-Crime) or .pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `c3d extract`")
    parser.add_argument("--to", required=True, metavar="OUT",
                        help="output: a .h5 file, or a folder (.txt rows or .pt tensors); replaced whole")
    parser.add_argument("--format", choices=("h5", "txt", "pt"), default=None,
                        help="default: from OUT's extension (.h5/.hdf5: h5, .pt: pt, none or .txt: txt)")
    parser.add_argument("--dataset-name", default=None, metavar="NAME",
                        help="h5: store video KEY's rows as KEY/NAME (ActivityNet: c3d_features) instead of KEY")


def run(args: argparse.Namespace) -> int:
    from c3dnet.features.pack import pack

    s = pack(args.features, args.to, args.format, args.dataset_name)
    print(f"packed {s.videos} videos into {s.path} ({s.format})")
    return 0
