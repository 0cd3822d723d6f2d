"""`c3d info WEIGHTS`: what a weight file holds: architecture, classes, preprocessing, size, source format."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "describe a weight file: architecture, classes, preprocessing, parameter count, source format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS", help="weight file in any supported format")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def describe(path: str) -> dict[str, Any]:
    """Everything `c3d info` reports about a weight file, as plain JSON-ready values."""
    from c3dnet.model import TEMPORAL_DEPTHS
    from c3dnet.weights import read_weights
    from c3dnet.weights.layouts import feature_size

    w = read_weights(path)
    c = w.config
    variant = next((name for name, d in TEMPORAL_DEPTHS.items() if d == c.temporal_depths), None)
    return {
        "path": str(w.path),
        "size_bytes": w.path.stat().st_size,
        "container": w.container,
        "source_format": w.source_format,
        "variant": variant,
        "config": c.to_dict(),
        "widths": list(c.widths),
        "pool5_features": feature_size(c),
        "num_parameters": w.num_parameters,
        "has_classifier": w.has_head,
        "num_classes": c.num_classes,
        "class_names": w.class_names,
        "preprocess": w.preprocess.to_dict(),
        "unexpected_keys": list(w.unexpected),
        "extra": w.extra,
    }


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _text(info: dict[str, Any]) -> str:
    c, p = info["config"], info["preprocess"]
    variant = info["variant"] or "custom"
    depths = "-".join(map(str, c["temporal_depths"]))
    names = info["class_names"]
    if names:
        shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        classes = f"{info['num_classes']}: {shown}"
    elif info["has_classifier"]:
        classes = f"{info['num_classes']} (no names recorded; set them with `c3d convert --class-names`)"
    else:
        classes = "none: backbone only (load with num_classes=N to add a classifier)"
    resize = f"resize to {p['resize_hw'][0]}x{p['resize_hw'][1]}" if p["resize_hw"] else f"short side {p['short_side']}"
    lines = [
        f"file:          {info['path']} ({info['container']}, {_size(info['size_bytes'])})",
        f"source format: {info['source_format']}",
        f"architecture:  C3D {variant} (temporal depths {depths}), widths {info['widths']} "
        f"(x{c['width_mult']:g}), fc {c['fc_dim']}, pool5 {c['pool5']} -> {info['pool5_features']} features, "
        f"dropout {c['dropout']}",
        f"input:         {c['in_channels']} x {c['clip_len']} x {c['crop_size']} x {c['crop_size']} (C, T, H, W)",
        f"parameters:    {info['num_parameters']:,}",
        f"classes:       {classes}",
        f"preprocessing: {p['channel_order']}, mean {p['mean']}, std {p['std']}, {resize}, crop {p['crop_size']}, "
        f"{p['clip_len']} frames at interval {p['frame_interval']}",
    ]
    if info["unexpected_keys"]:
        lines.append(f"ignored keys:  {', '.join(info['unexpected_keys'][:8])}")
    if info["extra"]:
        lines.append(f"extra:         {json.dumps(info['extra'], sort_keys=True)[:400]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = describe(args.weights)
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0
