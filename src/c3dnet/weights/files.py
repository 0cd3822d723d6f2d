"""Reading the tensors out of a weight file, whatever its container, without running code from it.

Containers, told apart by their first bytes rather than by the file name:
    safetensors         8-byte header length + JSON header ("{")
    torch zip           `torch.save` since PyTorch 1.6 ("PK\\x03\\x04"), read by `c3dnet.weights.torchzip`
    torch legacy        `torch.save` before 1.6 (a pickled magic number first), `weights_only=True`
    pickle              `.pdparams`, `c3d.pickle` and friends: numpy arrays through `c3dnet.safe_pickle`
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import stat
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.errors import OnnxFileError, TrainingStateError, WeightsError, printable
from c3dnet.log import get_logger
from c3dnet.safe_pickle import (
    InertObject,
    StructureError,
    UnsafePickleError,
    check_dtype,
    check_structure,
    load_safe_pickle,
)
from c3dnet.weights.native import read_safetensors, read_safetensors_header
from c3dnet.weights.torchzip import TensorRef, is_tensor_like, read_torch_zip

log = get_logger(__name__)

# torch.save's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2, LONG1).
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# Checkpoints often wrap the weights: {"state_dict": ..., "meta": ...} (mmaction2, mmengine), {"model": ...}.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# Paddle's bookkeeping entry in every saved state dict (structured name -> internal parameter name).
_PADDLE_NAME_MAP = "StructuredToParameterName@@"


@dataclass(frozen=True)
class RawWeights:
    """The tensors of a file under the file's own key names.

    Attributes:
        tensors: key -> float tensor, as stored (no layout mapping yet).
        metadata: the safetensors `__metadata__` map, or None for other containers.
        container: "safetensors", "torch" or "pickle".
        ignored: keys of non-tensor entries that were skipped (e.g. Paddle's `StructuredToParameterName@@`).
        dropped: the checkpoint's entries beside its state dict (`meta`, `optimizer`, `message_hub`, ...), each
            described by `describe_dropped`; none of their tensors is read.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] | None
    container: str
    ignored: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


# A training state written by c3dnet.engine.checkpoint (its "format" field): for --resume, not for loading.
_TRAIN_STATE_FORMAT = "c3dnet-train-state"
MAX_ZIP_ENTRIES = 20_000
"""Most entries a torch zip checkpoint may have (one per tensor storage, plus six)."""


def _check_regular_file(path: Path) -> int:
    """The size of `path`, a regular file; WeightsError naming what it is otherwise."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise WeightsError(f"{path}: is a directory, not a weights file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a character device" if stat.S_ISCHR(info.st_mode) else "a block device" if stat.S_ISBLK(info.st_mode)
                else "a pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "not a regular file")
        raise WeightsError(f"{path}: is {kind}, not a weights file; give the path of a weight file")
    if info.st_size == 0:
        raise WeightsError(
            f"{path}: the file is empty (0 bytes); the download or copy was probably interrupted, fetch it again"
        )
    return info.st_size


def looks_like_onnx(path: Path, head: bytes | None = None) -> bool:
    """Whether `path` is (named or looks like) an ONNX model rather than a weight file.

    Args:
        path: the file.
        head: its first bytes, when already read.
    """
    if path.suffix.lower() == ".onnx":
        return True
    if head is None:
        if not path.is_file():  # never open a FIFO or a device just to look
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(3)
        except OSError:
            return False
    # An ONNX ModelProto starts with ir_version (field 1, varint) and then producer_name, graph or opset_import.
    return (
        len(head) >= 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A, 0x42)
    )


def read_raw(path: str | Path) -> RawWeights:
    """Read every tensor of a weight file. Raises `WeightsError` naming the file for anything unreadable.

    Resources are bounded by the file's size before anything is allocated: safetensors headers are validated
    in full, torch zip entries must be stored uncompressed and fit in the file, pickles are unpickled with
    `c3dnet.safe_pickle`, and the tensors found may not hold more bytes than the file.
    """
    path = Path(path)
    size = _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        header = read_safetensors_header(path)
        if header is not None:
            return RawWeights(read_safetensors(path, header), header.metadata, "safetensors")
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if head.startswith(b"PK\x03\x04"):
        _check_torch_zip(path, size)
        return _from_object(path, read_torch_zip(path), "torch", size)
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return _from_object(path, _torch_load(path), "torch", size)
    if head[:1] in (b"\x80", b"(", b"}", b"]", b"c"):  # pickle protocol 2+ / protocol 0-1 openings
        return _from_object(path, load_safe_pickle(path), "pickle", size)
    if looks_like_onnx(path, head):
        raise OnnxFileError(
            f"{path}: an ONNX model (from `c3d export`), not a weight file; run it with `--onnx {path}` "
            f"(c3d predict, c3d extract), describe it with `c3d info {path}`, or pass the weights it was exported "
            f"from to --weights"
        )
    raise WeightsError(
        f"{path}: unknown file type (starts with {head[:8]!r}); expected a safetensors file, a torch checkpoint "
        f"(.pth/.pt), or a pickle of numpy arrays (.pdparams, c3d.pickle)"
    )


def _zip_entry_count(path: Path, size: int) -> int | None:
    """The entry count in a zip's end-of-central-directory record (zip64 too), or None when it has none.

    Read before `zipfile` parses the central directory, which costs ~500 bytes of memory per entry.
    """
    with open(path, "rb") as f:
        tail_size = min(size, 22 + 65535)
        f.seek(size - tail_size)
        tail = f.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        (count,) = struct.unpack("<H", tail[at + 10:at + 12])
        if count != 0xFFFF or at < 20 or tail[at - 20:at - 16] != b"PK\x06\x07":
            return count
        (zip64_at,) = struct.unpack("<Q", tail[at - 12:at - 4])
        if zip64_at + 56 > size:
            return None
        f.seek(zip64_at)
        record = f.read(56)
        if record[:4] != b"PK\x06\x06":
            return None
        return struct.unpack("<Q", record[32:40])[0]


def _check_torch_zip(path: Path, size: int) -> None:
    """Refuse torch zip files whose entries could expand beyond the file: compressed, or larger than it.

    `torch.save` stores every entry uncompressed; a deflated storage is a zip bomb (2 GB from 2 MB).
    """
    try:
        count = _zip_entry_count(path, size)
        if count is not None and count > MAX_ZIP_ENTRIES:
            raise WeightsError(
                f"{path}: a zip of {count:,} entries (at most {MAX_ZIP_ENTRIES:,}); not a C3D checkpoint"
            )
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error,
            NotImplementedError, MemoryError) as e:
        raise WeightsError(
            f"{path}: corrupt or truncated torch checkpoint (not a readable zip file: {str(e)[:200]}); download "
            f"or copy it again"
        ) from None
    if len(entries) > MAX_ZIP_ENTRIES:
        raise WeightsError(f"{path}: a zip of {len(entries):,} entries (at most {MAX_ZIP_ENTRIES:,}); not a C3D "
                           f"checkpoint")
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise WeightsError(
                f"{path}: refused to load: entry {printable(entry.filename)!r} is compressed "
                f"({entry.compress_size:,} -> {entry.file_size:,} bytes); torch.save never compresses, so the file "
                f"was altered (it may be a zip bomb). Re-save the weights with torch.save"
            )
        total += entry.file_size
    if total > size:
        raise WeightsError(
            f"{path}: corrupt torch checkpoint: its entries declare {total:,} bytes but the file has {size:,}; "
            f"download or copy it again"
        )


def _numpy_safe_globals() -> list[Any]:
    """numpy's array and scalar reconstruction, for checkpoints whose metadata holds numpy values.

    mmaction2/mmengine checkpoints often store e.g. `np.int64` epochs or `np.ndarray` means beside the
    weights; these are the same reconstruction functions that `c3dnet.safe_pickle` admits.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes]


def _torch_leaf(x: Any) -> Any:
    """What a torch checkpoint may hold besides containers: tensors that own their data, and atoms."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided or x.is_meta or x.device.type != "cpu":
            raise StructureError(f"a {x.layout} tensor on {x.device} (weights are dense CPU tensors)")
        nbytes = x.numel() * x.element_size()
        if nbytes > x.untyped_storage().nbytes():
            # An expanded view (stride 0) of a few bytes becomes gigabytes once made contiguous.
            raise StructureError(f"a tensor of shape {tuple(x.shape)} viewing a storage of only "
                                 f"{x.untyped_storage().nbytes()} bytes")
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        check_dtype(x.dtype)
    return x


def _torch_load(path: Path) -> Any:
    try:
        safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with safe_globals(_numpy_safe_globals()) if safe_globals else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
        return check_structure(obj, _torch_leaf)
    except UnsafePickleError as e:
        raise WeightsError(
            f"{path}: refused to load: the checkpoint holds {e}, which weight files never need; get the "
            f"weights from a trusted source"
        ) from None
    except StructureError as e:
        raise WeightsError(
            f"{path}: refused to load: the checkpoint holds {e}, which no weight file does; the file is corrupt "
            f"or hostile, get the weights from a trusted source"
        ) from None
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = [line for line in lines if "GLOBAL" in line or "Unsupported class" in line]
        if refused:
            # weights_only refused a global: the checkpoint holds arbitrary objects (or a payload).
            reason = refused[0].removeprefix("WeightsUnpickler error: ").split(". ")[0][:200]
            raise WeightsError(
                f"{path}: refused to load: the checkpoint holds Python objects that a weights file never needs "
                f"({reason}); it is loaded with torch.load(weights_only=True) only. If you trust the file, "
                f"re-save just its state_dict with torch.save(model.state_dict(), path)"
            ) from None
        detail = next((line for line in lines if "error" in line.lower() and "weights_only" not in line),
                      lines[0] if lines else type(e).__name__)
        raise WeightsError(
            f"{path}: corrupt or truncated torch checkpoint ({detail[:200]}); download or copy it again"
        ) from None
    except MemoryError:
        raise WeightsError(
            f"{path}: corrupt torch checkpoint (it declares more data than fits in memory); download or copy it again"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever torch raises for a damaged file is the same problem
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise WeightsError(
            f"{path}: corrupt or truncated torch checkpoint ({type(e).__name__}: {message}); "
            f"download or copy it again"
        ) from None


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]  # paddle.save of a Tensor inside a larger object: (internal name, ndarray)
    if isinstance(value, TensorRef):  # read from the torch zip now, and only if it is a weight
        value = value.load() if not value.dtype.is_complex else None
    if isinstance(value, torch.Tensor):
        return value if (value.dtype.is_floating_point or not value.dtype.is_complex) else None
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))
        elif not value.flags.writeable or not value.flags.c_contiguous:
            value = np.array(value, order="C")  # arrays from safe_pickle are read-only views of the file's bytes
        return torch.from_numpy(value)
    return None


def _training_state(path: Path, obj: Mapping) -> WeightsError:
    siblings = [path.parent / name for name in ("last.safetensors", "best.safetensors")]
    found = [str(p) for p in siblings if p.is_file()]
    use = " or ".join(found) if found else str(siblings[0])
    return TrainingStateError(
        f"{path}: a c3dnet training state (for `c3d train --resume`), not a weight file: it does not record the "
        f"preprocessing or class names the weights go with. Use {use}, written beside it by the same run"
        + ("" if found else " at the end of each epoch (none is there yet: let the run finish an epoch)")
    )


def _from_object(path: Path, obj: Any, container: str, size: int) -> RawWeights:
    """Find the state dict inside a loaded checkpoint object and keep its tensors (taken out of `obj`)."""
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path}: holds a {type(obj).__name__}, not a dict of weights; expected a state dict "
            f"(name -> tensor), optionally wrapped as {{'state_dict': ...}}"
        )
    if isinstance(obj.get("format"), str) and obj["format"].startswith(_TRAIN_STATE_FORMAT):
        raise _training_state(path, obj)
    top = obj
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(_is_weight(v) for v in inner.values()):
            log.debug("%s: weights found under %r", path, key)
            obj = inner
            break
    tensors, ignored, nbytes = {}, [], 0
    for key in list(obj):
        # Taken out one by one: an array copied out of the file's bytes frees them at once.
        value = obj.pop(key) if isinstance(obj, dict) else obj[key]
        if key == _PADDLE_NAME_MAP:
            continue
        tensor = _as_tensor(value)
        del value
        if tensor is None or not isinstance(key, str):
            ignored.append(printable(key))
            continue
        tensors[key] = tensor
        nbytes += tensor.numel() * tensor.element_size()
    if not tensors:
        shown = ", ".join(printable(k) for k in ignored[:8])
        raise WeightsError(
            f"{path}: no tensors found (top-level keys: {shown}); expected a state "
            f"dict of weights, optionally wrapped as {{'state_dict': ...}}"
        )
    if nbytes > size:
        raise WeightsError(
            f"{path}: refused to load: its tensors hold {nbytes:,} bytes but the file has only {size:,} (tensors "
            f"that repeat or expand shared data), which no weight file does; the file is corrupt or hostile"
        )
    dropped = tuple(f"{printable(k)} ({describe_dropped(v)})" for k, v in top.items() if v is not obj) \
        if top is not obj else ()
    return RawWeights(tensors, None, container, tuple(ignored), dropped)


def _is_weight(value: Any) -> bool:
    """Whether a state dict's value is a tensor or array (checked without reading a lazy torch-zip tensor)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]
    return is_tensor_like(value) or (isinstance(value, np.ndarray) and value.dtype.kind in "fiub")


def describe_dropped(value: Any) -> str:
    """What a checkpoint entry beside the weights held, in a few words: its type and size, the tensors left
    unread and the inert placeholders in it ("dict of 3 entries; 24 tensors not read; HistoryBuffer x5")."""
    seen: set[int] = set()
    tensors, inert = 0, collections.Counter()
    stack = [value]
    while stack:  # the structure was bounded and checked for cycles when it was loaded
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if is_tensor_like(x):
            tensors += 1
        elif isinstance(x, InertObject):
            inert[x.global_name.rpartition(".")[2]] += 1
            stack += [x.args, x.state, x.items]
        elif isinstance(x, Mapping):
            stack += list(x.values())
        elif isinstance(x, (list, tuple)):
            stack += list(x)
    kind = (f"{type(value).__name__} of {len(value)} {'entry' if len(value) == 1 else 'entries'}"
            if isinstance(value, (Mapping, list, tuple))
            else value.global_name if isinstance(value, InertObject) else type(value).__name__)
    parts = [kind] + ([f"{tensors} tensors not read"] if tensors else [])
    parts += [f"{name} x{n} (placeholder, never called)" for name, n in sorted(inert.items())]
    return "; ".join(parts)


__all__ = ["MAX_ZIP_ENTRIES", "RawWeights", "describe_dropped", "looks_like_onnx", "read_raw"]
