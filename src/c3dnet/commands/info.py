"""`c3d info FILE`: what a weight file (or an ONNX file from `c3d export`, or an OpenVINO folder from `c3d quantize`)
holds: architecture, classes, preprocessing, size, source format; for a quantized model also how it was calibrated
and how closely it matched fp32.

Names from the file (class names, keys) are printed with control characters escaped, so a downloaded file
cannot drive the terminal; `--json` escapes them as JSON does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

HELP = ("describe a weight file, an exported ONNX file or a quantized OpenVINO folder: architecture, classes, "
        "preprocessing, parameters")
_SIGPIPE_EXIT = 128 + 13  # what a shell reports for a writer whose reader went away (`yes | head`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="FILE", help="weight file in any supported format, an ONNX file "
                                                        "written by `c3d export`, or a folder from `c3d quantize`")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _summary(config: Any, preprocess: Any, class_names: list[str] | None) -> dict[str, Any]:
    from c3dnet.model import TEMPORAL_DEPTHS
    from c3dnet.weights.layouts import feature_size

    variant = next((name for name, d in TEMPORAL_DEPTHS.items() if d == config.temporal_depths), None)
    return {
        "variant": variant,
        "config": config.to_dict(),
        "widths": list(config.widths),
        "pool5_features": feature_size(config),
        "num_classes": config.num_classes,
        "class_names": class_names,
        "preprocess": preprocess.to_dict(),
    }


def describe(path: str) -> dict[str, Any]:
    """Everything `c3d info` reports about a weight file or ONNX file, as plain JSON-ready values."""
    from c3dnet.weights import read_weights
    from c3dnet.weights.files import looks_like_onnx

    if looks_like_onnx(Path(path)):
        return describe_onnx(path)
    if Path(path).is_dir():
        return describe_openvino(path)
    w = read_weights(path)
    return {
        "path": str(w.path),
        "size_bytes": w.path.stat().st_size,
        "container": w.container,
        "source_format": w.source_format,
        **_summary(w.config, w.preprocess, w.class_names),
        "num_parameters": w.num_parameters,
        "has_classifier": w.has_head,
        "unexpected_keys": list(w.unexpected),
        "dropped": list(w.dropped),
        "extra": w.extra,
    }


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `c3d info` reports about an ONNX file from `c3d export`, read from its `metadata_props` alone.

    Raises:
        WeightsError: not a readable ONNX file, or one without c3dnet's metadata.
    """
    import onnx

    from c3dnet.errors import WeightsError
    from c3dnet.export import META_PREFIX
    from c3dnet.model import C3DConfig
    from c3dnet.preprocess import Preprocess
    from c3dnet.weights.layouts import expected_shapes
    from c3dnet.weights.native import check_config_dict, check_preprocess_dict, loads_json

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)  # the weights may live in a `.data` sidecar
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise their own types for a damaged file
        raise WeightsError(f"{path}: not a readable ONNX file ({type(e).__name__}: {str(e)[:200]}); re-export it "
                           f"with `c3d export`") from None
    meta = {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    if "config" not in meta:
        raise WeightsError(f"{path}: an ONNX file without c3dnet metadata (not written by `c3d export`); c3d info "
                           f"describes the ONNX files c3dnet exports")
    config_dict = loads_json(path, meta["config"], "c3dnet.config metadata", 2, 1000)
    preprocess_dict = loads_json(path, meta.get("preprocess", "{}"), "c3dnet.preprocess metadata", 2, 1000)
    if not isinstance(config_dict, dict) or not isinstance(preprocess_dict, dict):
        raise WeightsError(f"{path}: c3dnet metadata 'config' and 'preprocess' must be JSON objects; re-export it")
    config = C3DConfig.from_dict(check_config_dict(path, config_dict))
    preprocess = Preprocess.from_dict(check_preprocess_dict(path, preprocess_dict))
    names = loads_json(path, meta.get("class_names", "null"), "c3dnet.class_names metadata", 1, config.num_classes)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)
                                  and len(names) == config.num_classes):
        raise WeightsError(f"{path}: c3dnet.class_names metadata is not a list of {config.num_classes} names")
    sidecar = path.with_name(path.name + ".data")
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0),
        "container": "onnx",
        "source_format": "c3dnet",
        **_summary(config, preprocess, names),
        "num_parameters": sum(math.prod(shape) for shape in expected_shapes(config).values()),
        "has_classifier": True,
        "unexpected_keys": [],
        "extra": {
            "exported_from": meta.get("weights"),
            "opset": opsets.get("ai.onnx"),
            "producer": proto.producer_name,
            "external_data": sidecar.name if sidecar.is_file() else None,
        },
    }


def describe_openvino(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `c3d info` reports about a folder from `c3d quantize`, checked as loading checks it (`WeightsError`
    naming what is missing)."""
    from c3dnet.inference.openvino import BIN_FILE, XML_FILE, OpenVinoC3D
    from c3dnet.weights.layouts import expected_shapes

    model = OpenVinoC3D.load(path)
    meta = model.metadata
    return {
        "path": str(model.path),
        "size_bytes": sum((model.path / name).stat().st_size for name in (XML_FILE, BIN_FILE)),
        "container": f"openvino IR ({meta['precision']})",
        "source_format": "c3dnet",
        **_summary(model.config, model.preprocess, model.class_names),
        "num_parameters": sum(math.prod(shape) for shape in expected_shapes(model.config).values()),
        "has_classifier": True,
        "unexpected_keys": [],
        "quantization": {"precision": meta["precision"], "calibration": meta.get("calibration"),
                         "accuracy": meta.get("accuracy")},
        "extra": {"made_from": meta.get("weights"), "weights_sha256": meta.get("weights_sha256"),
                  "openvino": meta.get("openvino"), "nncf": meta.get("nncf")},
    }


def _quantization(q: dict[str, Any]) -> list[str]:
    """`c3d info`'s lines on how a quantized model was calibrated and checked."""
    calib, acc = q.get("calibration") or {}, q.get("accuracy") or {}
    if q["precision"] == "int8":
        how = f"calibrated on {calib.get('clips')} clips of {calib.get('videos')} videos ({calib.get('held_out')} " \
              "more held out)"
    else:  # `c3d quantize --float`
        how = f"not quantized (--precision bf16 runs it in bf16), checked on {calib.get('held_out')} clips of " \
              f"{calib.get('videos')} videos"
    lines = [f"precision:     {q['precision']}, {how}"]
    if acc:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in (acc.get("max_rel_error") or {}).items())
        lines.append(f"vs fp32:       top-1 agreement {100 * acc['top1_agreement']:.1f}% of {acc['clips']} held-out "
                     f"clips, fc6 cosine min {acc['fc6_cosine_min']:.4f}, fc7 cosine min {acc['fc7_cosine_min']:.4f}, "
                     f"max relative error {errors}")
    return lines


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _text(info: dict[str, Any]) -> str:
    from c3dnet.errors import printable

    c, p = info["config"], info["preprocess"]
    variant = info["variant"] or "custom"
    depths = "-".join(map(str, c["temporal_depths"]))
    names = info["class_names"]
    if names:
        shown = ", ".join(printable(n) for n in names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5
                                                               else "")
        classes = f"{info['num_classes']}: {shown}"
    elif info["has_classifier"]:
        classes = f"{info['num_classes']} (no names recorded; set them with `c3d convert --class-names`)"
    else:
        classes = "none: backbone only (load with num_classes=N to add a classifier)"
    resize = f"resize to {p['resize_hw'][0]}x{p['resize_hw'][1]}" if p["resize_hw"] else f"short side {p['short_side']}"
    lines = [
        f"file:          {printable(info['path'])} ({info['container']}, {_size(info['size_bytes'])})",
        f"source format: {printable(info['source_format'])}",
        f"architecture:  C3D {variant} (temporal depths {depths}), widths {info['widths']} "
        f"(x{c['width_mult']:g}), fc {c['fc_dim']}, pool5 {c['pool5']} -> {info['pool5_features']} features, "
        f"dropout {c['dropout']}",
        f"input:         {c['in_channels']} x {c['clip_len']} x {c['crop_size']} x {c['crop_size']} (C, T, H, W)",
        f"parameters:    {info['num_parameters']:,}",
        f"classes:       {classes}",
        f"preprocessing: {p['channel_order']}, mean {p['mean']}, std {p['std']}, {resize}, crop {p['crop_size']}, "
        f"{p['clip_len']} frames at interval {p['frame_interval']}",
    ]
    if info.get("quantization"):
        lines += _quantization(info["quantization"])
    if info["unexpected_keys"]:
        lines.append(f"ignored keys:  {', '.join(printable(k) for k in info['unexpected_keys'][:8])}")
    for entry in info.get("dropped", []):  # a checkpoint's metadata beside its weights (mmengine's meta, ...)
        lines.append(f"dropped:       {printable(entry)}")
    if info["extra"]:
        lines.append(f"extra:         {json.dumps(info['extra'], sort_keys=True)[:400]}")  # JSON escapes controls
    return "\n".join(lines)


def write_stdout(text: str) -> bool:
    """Print `text`; False, quietly, when the reader has gone away (`c3d info --json | head`).

    Once the pipe is closed, stdout is pointed at /dev/null so that the interpreter's final flush at exit
    cannot raise BrokenPipeError again.
    """
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a file descriptor (captured in tests): nothing to flush
            pass
        return False


def run(args: argparse.Namespace) -> int:
    info = describe(args.weights)
    return 0 if write_stdout(json.dumps(info, indent=2) if args.json else _text(info)) else _SIGPIPE_EXIT
