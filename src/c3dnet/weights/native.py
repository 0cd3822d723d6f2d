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

import dataclasses
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write_bytes
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import CHANNEL_ORDERS, VOLUME_MEAN_TENSOR, Preprocess

NATIVE_FORMAT = "c3dnet"
FORMAT_VERSION = "1"


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

    from c3dnet.version import __version__

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
    if preprocess.volume_mean is not None:  # ~4 MB of per-pixel mean: a tensor, not JSON in the header
        tensors[VOLUME_MEAN_TENSOR] = torch.from_numpy(preprocess.volume_mean.values.copy())
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


# safetensors dtype -> (torch dtype, bytes per element): the ones a float weight file can hold.
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
MAX_HEADER = 8 * 1024 * 1024
"""Largest safetensors JSON header accepted: a C3D file's is a few kB, tens with thousands of class names."""
MAX_TENSORS = 10_000
_MAX_NDIM = 8
_MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: its dtype name, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A fully validated safetensors header.

    Attributes:
        tensors: name -> entry, in the order of their data.
        metadata: the `__metadata__` map (str -> str), or None.
        data_start: file offset of the data section (8 + the header's length).
    """

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] | None
    data_start: int


JSON_CHUNK = 1 << 16
"""Bytes of JSON text `check_json_shape` looks at a time."""


def check_json_shape(raw: bytes, max_depth: int, max_items: int) -> str | None:
    """Why `raw` (JSON text) is too deep or has too many items to parse, or None if it is within bounds.

    Parsing JSON costs memory in proportion to its items (a 4-byte `"a",` becomes a 50-byte str object), and
    Python's parser recurses once per nesting level; both are counted here on the text, outside its strings, in
    64 KiB chunks: linear time, and a few MB of temporaries whatever the text's size (a substitution that
    removed the strings first cost 30 times the text).
    """
    items, depth, inside, backslashes = 0, 0, False, 0  # carried from chunk to chunk
    chunk = JSON_CHUNK
    for i in range(0, len(raw), chunk):
        b = np.frombuffer(raw, np.uint8, count=min(chunk, len(raw) - i), offset=i)
        n = len(b)
        is_bs = b == 0x5C
        # For each position, the last one before it (or at it) that is not a backslash: -1 for the chunk's start.
        last_other = np.maximum.accumulate(np.where(is_bs, -1, np.arange(n)))
        quotes = np.flatnonzero(b == 0x22)
        before = quotes - 1
        lead = np.where(before >= 0, last_other[np.maximum(before, 0)], -1)
        run = before - lead + np.where(lead < 0, backslashes, 0)  # backslashes right before each quote
        toggles = np.zeros(n, np.int8)
        toggles[quotes[run % 2 == 0]] = 1  # a quote after an even run of backslashes opens or closes a string
        state = (np.cumsum(toggles, dtype=np.int32) + inside) % 2  # 1 inside a string, after each position
        outside = (state == 0) & (toggles == 0)
        items += int(np.count_nonzero(outside & ((b == 0x2C) | (b == 0x3A))))
        if items > max_items:
            return f"more than {max_items:,} items"
        steps = (outside & ((b == 0x5B) | (b == 0x7B))).astype(np.int32) - \
            (outside & ((b == 0x5D) | (b == 0x7D))).astype(np.int32)
        levels = depth + np.cumsum(steps, dtype=np.int64)
        if n and int(levels.max()) > max_depth:
            return f"nesting deeper than {max_depth} levels"
        depth = int(levels[-1]) if n else depth
        inside = bool(state[-1]) if n else inside
        backslashes = (n - 1 - int(last_other[-1])) + (backslashes if last_other[-1] < 0 else 0) if n else backslashes
    return None


def loads_json(path: Path, raw: bytes | str, what: str, max_depth: int, max_items: int) -> Any:
    """`json.loads(raw)` after `check_json_shape`; duplicate keys and bad JSON are `WeightsError`s naming `path`."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    problem = check_json_shape(data, max_depth, max_items)
    if problem:
        raise WeightsError(f"{path}: corrupt {what}: {problem}; download or copy the file again")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("a key appears twice in one object")
        return out

    try:
        return json.loads(raw, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: corrupt {what} ({str(e)[:200]}); download or copy the file again") from None


def _is_int(value: Any, low: int = 0, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value <= high)


def _tensor_entry(path: Path, name: str, info: Any) -> TensorEntry:
    where = f"{path}: corrupt safetensors header: tensor {name!r:.100}"
    if not isinstance(info, dict):
        raise WeightsError(f"{where} is a {type(info).__name__}, not an object; download or copy the file again")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise WeightsError(f"{where} has no {', '.join(missing)}; download or copy the file again")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise WeightsError(
            f"{path}: tensor {name!r:.100} has dtype {dtype!r:.40}; c3dnet loads {', '.join(SAFETENSORS_DTYPES)}"
        )
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(_is_int(n) for n in shape)):
        raise WeightsError(f"{where} has shape {shape!r:.80}, not a list of at most {_MAX_NDIM} sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        raise WeightsError(f"{where} has data_offsets {offsets!r:.80}, not [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
    if offsets[1] - offsets[0] != nbytes:
        raise WeightsError(
            f"{where} of shape {tuple(shape)} and dtype {dtype} needs {nbytes} bytes but its data_offsets "
            f"{offsets} hold {offsets[1] - offsets[0]}; download or copy the file again"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def read_safetensors_header(path: Path) -> SafetensorsHeader | None:
    """The fully validated header of a safetensors file, or None if the file does not look like one.

    Everything is checked before any tensor is read: the header's size and JSON (bounded depth and item
    count, no duplicate keys), each tensor's dtype, shape and byte range (shape x dtype size), the byte ranges
    tiling the data section exactly, and `__metadata__` being a map of strings.

    Raises:
        WeightsError: the file starts like safetensors but is truncated, too large a header, or corrupt.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(9)
        if len(head) < 9:
            return None
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or n < 2 or n >= 1 << 40:
            return None
        if 8 + n > size:
            raise WeightsError(
                f"{path}: truncated safetensors file: its header needs {8 + n} bytes but the file has {size}; "
                f"download or copy it again"
            )
        if n > MAX_HEADER:
            raise WeightsError(
                f"{path}: a safetensors header of {n:,} bytes (c3dnet reads at most {MAX_HEADER:,}; a C3D file's "
                f"is a few kB); the file is corrupt or not a C3D weight file"
            )
        f.seek(8)
        raw = f.read(n)
    header = loads_json(path, raw, "safetensors header", max_depth=3, max_items=20 * MAX_TENSORS + 100_000)
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object); download or copy it again")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise WeightsError(f"{path}: corrupt safetensors header: __metadata__ is not a map of strings")
    if len(header) > MAX_TENSORS:
        raise WeightsError(f"{path}: {len(header):,} tensors (at most {MAX_TENSORS:,}); not a C3D weight file")
    entries = sorted(((name, _tensor_entry(path, name, info)) for name, info in header.items()),
                     key=lambda item: (item[1].begin, item[1].end))
    data_size, position = size - 8 - n, 0
    for name, entry in entries:
        if entry.begin != position:
            problem = "overlaps the previous tensor" if entry.begin < position else "leaves a gap before it"
            raise WeightsError(f"{path}: corrupt safetensors header: tensor {name!r:.100} {problem} "
                               f"(data_offsets {[entry.begin, entry.end]}); download or copy the file again")
        position = entry.end
    if position != data_size:
        what = "truncated safetensors file" if position > data_size else "corrupt safetensors file"
        raise WeightsError(
            f"{path}: {what}: its tensors need {8 + n + position} bytes but the file has {size}; download or "
            f"copy it again"
        )
    return SafetensorsHeader(dict(entries), metadata, 8 + n)


def read_safetensors(path: Path, header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header `read_safetensors_header` validated, one read each."""
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        for name, entry in header.tensors.items():
            dtype = SAFETENSORS_DTYPES[entry.dtype][0]
            if entry.end == entry.begin:
                tensors[name] = torch.zeros(entry.shape, dtype=dtype)
                continue
            buffer = bytearray(entry.end - entry.begin)
            f.seek(header.data_start + entry.begin)
            if f.readinto(buffer) != len(buffer):
                raise WeightsError(f"{path}: truncated safetensors file (it changed while being read); read again")
            tensors[name] = torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
    return tensors


def _json_field(path: Path, metadata: dict[str, str], key: str, default: Any, max_depth: int = 2,
                max_items: int = 1000) -> Any:
    if key not in metadata:
        return default
    return loads_json(path, metadata[key], f"metadata field {key!r}", max_depth, max_items)


def _field_error(path: Path, section: str, key: str, value: Any, expected: str) -> WeightsError:
    return WeightsError(
        f"{path}: invalid c3dnet metadata: {section}.{key} is {value!r:.60}, expected {expected}; the file is "
        f"corrupt, re-save it with save_model or convert the original again"
    )


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_config_dict(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """`config` if every field of a `C3DConfig` dict has the right type and a sane value (else WeightsError)."""
    known = set(C3DConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise WeightsError(f"{path}: invalid c3dnet metadata: unknown config fields {unknown}; known: {sorted(known)}")
    for key in ("num_classes", "fc_dim", "clip_len", "crop_size", "in_channels"):
        if key in config and not _is_int(config[key], 16 if key == "crop_size" else 1, _MAX_INT):
            raise _field_error(path, "config", key, config[key], f"an integer from {16 if key == 'crop_size' else 1}")
    if "width_mult" in config and not (_finite(config["width_mult"]) and 0 < config["width_mult"] <= 1024):
        raise _field_error(path, "config", "width_mult", config["width_mult"], "a number in (0, 1024]")
    if "dropout" in config and not (_finite(config["dropout"]) and 0 <= config["dropout"] < 1):
        raise _field_error(path, "config", "dropout", config["dropout"], "a number in [0, 1)")
    if "pool5" in config and config["pool5"] not in ("padded", "caffe"):
        raise _field_error(path, "config", "pool5", config["pool5"], "'padded' or 'caffe'")
    depths = config.get("temporal_depths", [3] * 5)
    if not (isinstance(depths, list) and len(depths) == 5 and all(_is_int(d, 1, 255) and d % 2 for d in depths)):
        raise _field_error(path, "config", "temporal_depths", depths, "5 odd integers from 1")
    return config


def check_preprocess_dict(path: Path, preprocess: dict[str, Any]) -> dict[str, Any]:
    """`preprocess` if every field of a `Preprocess` dict has the right type and a sane value (else WeightsError)."""
    known = {f.name for f in dataclasses.fields(Preprocess)}
    unknown = sorted(set(preprocess) - known)
    if unknown:
        raise WeightsError(f"{path}: invalid c3dnet metadata: unknown preprocessing fields {unknown}; known: "
                           f"{sorted(known)}")
    for key in ("mean", "std"):
        value = preprocess.get(key, [1.0] * 3)
        if not (isinstance(value, list) and len(value) == 3 and all(_finite(v) for v in value)
                and (key == "mean" or all(v > 0 for v in value))):
            raise _field_error(path, "preprocess", key, value, "3 finite numbers" + (" > 0" if key == "std" else ""))
    if "channel_order" in preprocess and preprocess["channel_order"] not in CHANNEL_ORDERS:
        raise _field_error(path, "preprocess", "channel_order", preprocess["channel_order"],
                           " or ".join(CHANNEL_ORDERS))
    for key in ("short_side", "crop_size", "clip_len", "frame_interval"):
        if key in preprocess and not _is_int(preprocess[key], 1, 65536):
            raise _field_error(path, "preprocess", key, preprocess[key], "an integer from 1 to 65536")
    resize = preprocess.get("resize_hw")
    if resize is not None and not (isinstance(resize, list) and len(resize) == 2
                                   and all(_is_int(v, 1, 65536) for v in resize)):
        raise _field_error(path, "preprocess", "resize_hw", resize, "null or [height, width]")
    volume = preprocess.get("volume_mean")
    if volume is not None and not (
        isinstance(volume, dict) and set(volume) == {"shape", "sha256", "source", "tensor"}
        and isinstance(volume["shape"], list) and len(volume["shape"]) == 4 and volume["shape"][0] == 3
        and all(_is_int(v, 1, 4096) for v in volume["shape"]) and isinstance(volume["sha256"], str)
        and re.fullmatch("[0-9a-f]{64}", volume["sha256"]) and isinstance(volume["source"], str)
        and len(volume["source"]) <= 255 and volume["tensor"] == VOLUME_MEAN_TENSOR
    ):
        raise _field_error(path, "preprocess", "volume_mean", volume,
                           f"null or {{shape: [3, T, H, W], sha256, source, tensor: {VOLUME_MEAN_TENSOR!r}}}")
    return preprocess


def parse_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Decode and check a native file's `__metadata__` (config and preprocess as dicts of valid values).

    Raises:
        WeightsError: a field that is not valid JSON, has the wrong type, or holds an unusable value.
    """
    config = _json_field(path, metadata, "config", None)
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: c3dnet metadata has no 'config' object; re-save the file with save_model")
    check_config_dict(path, config)
    num_classes = config.get("num_classes", C3DConfig().num_classes)
    preprocess = _json_field(path, metadata, "preprocess", None, max_depth=3)
    if preprocess is not None and not isinstance(preprocess, dict):
        raise WeightsError(f"{path}: metadata 'preprocess' is a {type(preprocess).__name__}, not an object")
    if preprocess is not None:
        check_preprocess_dict(path, preprocess)
    # One name per class: the count of names is bounded by the classifier, whose weights are in the file.
    class_names = _json_field(path, metadata, "class_names", None, max_depth=1, max_items=num_classes)
    extra = _json_field(path, metadata, "extra", {}, max_depth=32, max_items=100_000)
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise WeightsError(f"{path}: metadata 'class_names' must be a list of strings or null")
    source_format = metadata.get("source_format", NATIVE_FORMAT)
    if len(source_format) > 64:
        raise WeightsError(f"{path}: metadata 'source_format' is {len(source_format)} characters long (at most 64)")
    return {
        "format": metadata.get("format"),
        "format_version": metadata.get("format_version"),
        "c3dnet_version": metadata.get("c3dnet_version"),
        "config": config,
        "preprocess": preprocess,
        "class_names": class_names,
        "source_format": source_format,
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
    metadata = header.metadata or {}
    if metadata.get("format") != NATIVE_FORMAT:
        raise WeightsError(
            f"{path}: a safetensors file without c3dnet metadata; convert it with "
            f"`c3d convert {path} OUT.safetensors` to record its config and preprocessing"
        )
    return parse_metadata(path, metadata)


__all__ = [
    "FORMAT_VERSION",
    "MAX_HEADER",
    "NATIVE_FORMAT",
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "TensorEntry",
    "check_config_dict",
    "check_preprocess_dict",
    "parse_metadata",
    "read_metadata",
    "read_safetensors",
    "read_safetensors_header",
    "save_model",
    "save_native",
]
