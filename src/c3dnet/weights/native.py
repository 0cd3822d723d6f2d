"""c3dnet's native weight format: a safetensors file whose header metadata describes the model.

The safetensors header's `__metadata__` (a str -> str map) holds:
    format          "c3dnet"
    format_version  "1"
    c3dnet_version  the package version that wrote the file
    config          JSON of `C3DConfig.to_dict()`
    preprocess      JSON of `Preprocess.to_dict()`
    class_names     JSON list of names, or null
    source_format   the format the weights were first imported from ("c3dnet", "paddle", "mmaction2", ...)
    extra           JSON object for the caller (training state summary, metrics, ...)
Tensor names are the C3D module's own state-dict keys (`conv1a.weight`, ..., `fc6.weight`, `head.bias`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write_bytes
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess

NATIVE_FORMAT = "c3dnet"
FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def save_native(
    path: str | os.PathLike[str],
    state: dict[str, torch.Tensor],
    config: C3DConfig,
    preprocess: Preprocess,
    class_names: list[str] | None = None,
    source_format: str = NATIVE_FORMAT,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `state` (c3dnet key names) and its metadata as a native `.safetensors` file, atomically."""
    from safetensors.torch import save

    from c3dnet import __version__

    if class_names is not None and len(class_names) != config.num_classes:
        raise WeightsError(f"{path}: {len(class_names)} class names for a {config.num_classes}-class model")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as e:
        raise WeightsError(f"{path}: `extra` must be JSON-serialisable ({e})") from None
    metadata = {
        "format": NATIVE_FORMAT,
        "format_version": FORMAT_VERSION,
        "c3dnet_version": __version__,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "preprocess": json.dumps(preprocess.to_dict(), sort_keys=True),
        "class_names": json.dumps(list(class_names) if class_names is not None else None),
        "source_format": source_format,
        "extra": extra_json,
    }
    # safetensors wants contiguous CPU tensors that share no storage.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _unwrap(model: torch.nn.Module, path: str | os.PathLike[str]) -> C3D:
    # DistributedDataParallel keeps the model in `.module`, torch.compile in `._orig_mod`.
    for _ in range(4):
        if isinstance(model, C3D):
            return model
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    raise WeightsError(f"{path}: save_model needs a c3dnet C3D model, got {type(model).__name__}")


def save_model(model: C3D, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Save `model` in the native format with its config, preprocessing and class names.

    Args:
        model: the C3D to save, also inside DistributedDataParallel or torch.compile. Its `source_format`
            attribute (set by `load_model`) is recorded when present.
        path: output file, conventionally `*.safetensors`; written atomically.
        extra: JSON-serialisable dict stored under metadata "extra" (e.g. epoch, metrics).
    """
    model = _unwrap(model, path)
    save_native(
        path,
        model.state_dict(),
        model.config,
        model.preprocess,
        model.class_names,
        source_format=getattr(model, "source_format", NATIVE_FORMAT),
        extra=extra,
    )


def read_safetensors_header(path: Path) -> dict[str, Any] | None:
    """The parsed JSON header of a safetensors file, or None if the file does not look like one.

    Raises:
        WeightsError: the file starts like safetensors but is truncated or its header is corrupt.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9:
            return None
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or n < 2 or n > _MAX_HEADER:
            return None
        if 8 + n > size:
            raise WeightsError(
                f"{path}: truncated safetensors file: its header needs {8 + n} bytes but the file has {size}; "
                f"download or copy it again"
            )
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: corrupt safetensors header ({e}); download or copy the file again") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    data_size = max(ends, default=0)
    if 8 + n + data_size > size:
        raise WeightsError(
            f"{path}: truncated safetensors file: its tensors need {8 + n + data_size} bytes but the file has "
            f"{size}; download or copy it again"
        )
    return header


def _json_field(path: Path, metadata: dict[str, str], key: str, default: Any) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: metadata field {key!r} is not valid JSON ({e})") from None


def parse_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Decode a native file's `__metadata__` into plain Python values (config and preprocess as dicts)."""
    config = _json_field(path, metadata, "config", None)
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: c3dnet metadata has no 'config' object; re-save the file with save_model")
    preprocess = _json_field(path, metadata, "preprocess", None)
    class_names = _json_field(path, metadata, "class_names", None)
    extra = _json_field(path, metadata, "extra", {})
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise WeightsError(f"{path}: metadata 'class_names' must be a list of strings or null")
    return {
        "format": metadata.get("format"),
        "format_version": metadata.get("format_version"),
        "c3dnet_version": metadata.get("c3dnet_version"),
        "config": config,
        "preprocess": preprocess if isinstance(preprocess, dict) else None,
        "class_names": class_names,
        "source_format": metadata.get("source_format", NATIVE_FORMAT),
        "extra": extra if isinstance(extra, dict) else {},
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a native c3dnet file, read from its header alone (no tensors are loaded).

    Returns:
        A dict with keys "format", "format_version", "c3dnet_version", "config" (dict for
        `C3DConfig.from_dict`), "preprocess" (dict for `Preprocess.from_dict`), "class_names" (list or None),
        "source_format" and "extra" (dict).

    Raises:
        WeightsError: the file is missing, not safetensors, truncated, or carries no c3dnet metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    header = read_safetensors_header(path)
    if header is None:
        raise WeightsError(
            f"{path}: not a native c3dnet file (not safetensors); convert it with `c3d convert {path} OUT.safetensors`"
        )
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != NATIVE_FORMAT:
        raise WeightsError(
            f"{path}: a safetensors file without c3dnet metadata; convert it with "
            f"`c3d convert {path} OUT.safetensors` to record its config and preprocessing"
        )
    return parse_metadata(path, metadata)


__all__ = ["FORMAT_VERSION", "NATIVE_FORMAT", "read_metadata", "save_model", "save_native"]
