"""`c3d convert SRC DST`: any supported weight file -> c3dnet's native safetensors format with metadata."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported in run(): `c3d --help` stays fast
    from c3dnet.preprocess import Preprocess

HELP = "convert weights (mmaction2 .pth, Paddle .pdparams, Caffe conversions, Sequential ports) to native"

_CLASS_INDEX_LINE = re.compile(r"^\s*\d+\s+(\S.*?)\s*$")  # UCF-101's classInd.txt: "1 ApplyEyeMakeup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="weight file in any supported format")
    parser.add_argument("dst", metavar="DST", help="output file, e.g. c3d_ucf101.safetensors (written atomically)")
    parser.add_argument("--class-names", metavar="FILE|a,b,c",
                        help="class names: a text file with one name per line (or `index name` lines, like "
                             "UCF-101's classInd.txt), or a comma-separated list")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="classifier size; a different size than the file's re-initialises the classifier")
    parser.add_argument("--pool5", choices=("padded", "caffe"),
                        help="override pool5: 'caffe' for weights converted from Caffe C3D under other key names")
    parser.add_argument("--preprocess", choices=("seed", "caffe"),
                        help="override the preprocessing: 'seed' (RGB, mean 104/117/128, short side 128) or "
                             "'caffe' (BGR, mean 90.25/97.66/101.41, resize 128x171)")
    parser.add_argument("--mean-file", metavar="FILE",
                        help="Caffe C3D's volume mean (sport1m_train16_128_mean.binaryproto): stored in DST and "
                             "subtracted per pixel by predict, extract and test; implies BGR and the mean's fixed "
                             "resize (128x171)")


def read_class_names(spec: str) -> list[str]:
    """Class names from a file (one per line, or `index name` lines) or a comma-separated list."""
    from c3dnet.errors import ConfigError

    path = Path(spec)
    if path.is_file():
        names = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            match = _CLASS_INDEX_LINE.match(line)
            name = match.group(1) if match else line.strip()
            if name in names:
                raise ConfigError(f"{path}:{lineno}: class name {name!r} appears twice; names must be unique")
            names.append(name)
        if not names:
            raise ConfigError(f"{path}: no class names in the file; write one name per line")
        return names
    if "," not in spec and ("/" in spec or spec.endswith(".txt")):
        raise ConfigError(f"--class-names {spec}: no such file; give a file of names or a list like a,b,c")
    names = [n.strip() for n in spec.split(",")]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"--class-names {spec!r}: names must be non-empty and unique (a,b,c)")
    return names


def check_distinct(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Refuse a DST that is SRC itself (same path, a symlink to it, or a hard link): it would be overwritten."""
    from c3dnet.errors import ConfigError

    src, dst = Path(src), Path(dst)
    same = src.resolve() == dst.resolve()
    if not same and src.exists() and dst.exists():
        try:
            same = os.path.samefile(src, dst)
        except OSError:
            same = False
    if same:
        suggestion = src.with_name(f"{src.stem}{'_c3dnet' if src.suffix == '.safetensors' else ''}.safetensors")
        raise ConfigError(
            f"{dst}: is the source file {src}; converting in place would overwrite the original weights. Write to "
            f"another file, e.g. `c3d convert {src} {suggestion}`"
        )


def with_volume_mean(preprocess: Preprocess, mean_file: str) -> Preprocess:
    """`preprocess` with Caffe's volume mean from `mean_file`: BGR, the mean's fixed resize, its per-channel
    average as the `mean` (what a reader without the volume sees)."""
    import dataclasses

    from c3dnet.errors import ConfigError
    from c3dnet.log import get_logger
    from c3dnet.preprocess import VolumeMean
    from c3dnet.weights.caffe_mean import read_mean_file

    values = read_mean_file(mean_file)
    volume = VolumeMean(values, Path(mean_file).name)
    _, _, height, width = volume.shape
    if preprocess.channel_order != "BGR":
        get_logger(__name__).warning("%s: a Caffe mean implies BGR input; the weights' preprocessing said %s, now BGR",
                                     mean_file, preprocess.channel_order)
    try:
        return dataclasses.replace(preprocess, channel_order="BGR", resize_hw=(height, width),
                                   mean=tuple(float(m) for m in values.mean(axis=(1, 2, 3))), volume_mean=volume)
    except ValueError as e:
        raise ConfigError(f"--mean-file {mean_file}: does not fit the weights ({e})") from None


def run(args: argparse.Namespace) -> int:
    from c3dnet.errors import WeightsError, printable
    from c3dnet.model import count_parameters
    from c3dnet.preprocess import CAFFE_PREPROCESS, SEED_PREPROCESS
    from c3dnet.weights import model_from_weights, read_weights, save_model, with_geometry_preprocess, with_pool5

    check_distinct(args.src, args.dst)
    class_names = read_class_names(args.class_names) if args.class_names else None
    weights = read_weights(args.src)
    if class_names is not None and args.num_classes is None and weights.has_head \
            and len(class_names) != weights.config.num_classes:
        raise WeightsError(
            f"{args.src}: the classifier has {weights.config.num_classes} classes but --class-names gives "
            f"{len(class_names)}; fix the names, or pass --num-classes {len(class_names)} to re-initialise it"
        )
    if args.pool5:
        weights = with_pool5(weights, args.pool5)
    if args.preprocess:
        weights = with_geometry_preprocess(weights, CAFFE_PREPROCESS if args.preprocess == "caffe" else SEED_PREPROCESS)
    if args.mean_file:
        weights = with_geometry_preprocess(weights, with_volume_mean(weights.preprocess, args.mean_file))
    extra = {**weights.extra, "converted_from": Path(args.src).name}
    model = model_from_weights(weights, num_classes=args.num_classes, class_names=class_names, copy=False)
    save_model(model, args.dst, extra=extra)
    c = model.config
    names = f", names {', '.join(printable(n) for n in model.class_names[:3])}..." if model.class_names else ""
    print(
        f"wrote {args.dst}: {weights.source_format} -> c3dnet, {count_parameters(model):,} parameters, "
        f"{c.num_classes} classes{names}, input {c.clip_len}x{c.crop_size}x{c.crop_size}, pool5 {c.pool5}, "
        f"{model.preprocess.channel_order} mean {list(model.preprocess.mean)}"
    )
    return 0
