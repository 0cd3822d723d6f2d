"""`c3d pack FEATURES_DIR --to OUT [--format h5|txt|pt|npy] [--split-crops] [--pca FILE [--pca-dim K]]`: extracted
features as one HDF5 file or a folder."""

from __future__ import annotations

import argparse

from c3dnet.commands.common import add_pca_arguments

HELP = ("pack the per-video features of `c3d extract` into one HDF5 file, or a folder of .txt (UCF-Crime), .pt or "
        ".npy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `c3d extract`")
    parser.add_argument("--to", required=True, metavar="OUT",
                        help="output: a .h5 file, or a folder (.txt rows or .pt tensors); replaced whole")
    parser.add_argument("--format", choices=("h5", "txt", "pt", "npy"), default=None,
                        help="default: from OUT's extension (.h5/.hdf5: h5, .pt: pt, none or .txt: txt); npy: a "
                             "folder of <video>.npy")
    parser.add_argument("--dataset-name", default=None, metavar="NAME",
                        help="h5: store video KEY's rows as KEY/NAME (ActivityNet: c3d_features) instead of KEY")
    parser.add_argument("--split-crops", action="store_true",
                        help="features of --crops 5|10: one file per crop, <video>_<k>.npy, <video>_<k>_C.txt or "
                             "<video>_<k>.pt (k in the recorded crop order; UR-DMU's layout)")
    add_pca_arguments(parser, "every row of features extracted without --pca")


def run(args: argparse.Namespace) -> int:
    from c3dnet.features.pack import pack

    s = pack(args.features, args.to, args.format, args.dataset_name, split_crops=args.split_crops, pca=args.pca,
             pca_dim=args.pca_dim)
    print(f"packed {s.videos} videos into {s.path} ({s.format})")
    return 0
