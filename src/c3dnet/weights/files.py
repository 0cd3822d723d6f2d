"""Reading the tensors out of a weight file, whatever its container, without running code from it.

Containers, told apart by their first bytes rather than by the file name:
    safetensors         8-byte header length + JSON header ("{")
    torch zip           `torch.save` since PyTorch 1.6 ("PK\\x03\\x04"), loaded with `weights_only=True`
    torch legacy        `torch.save` before 1.6 (a pickled magic number first), `weights_only=True`
    pickle              `.pdparams`, `c3d.pickle` and friends: numpy arrays through `c3dnet.safe_pickle`
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.errors import WeightsError
from c3dnet.log import get_logger
from c3dnet.safe_pickle import check_no_object_arrays, load_safe_pickle
from c3dnet.weights.native import read_safetensors_header

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
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] | None
    container: str
    ignored: tuple[str, ...] = ()


def read_raw(path: str | Path) -> RawWeights:
    """Read every tensor of a weight file. Raises `WeightsError` naming the file for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: is a directory, not a weights file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            raise WeightsError(
                f"{path}: the file is empty (0 bytes); the download or copy was probably interrupted, fetch it again"
            )
        header = read_safetensors_header(path)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if header is not None:
        return _read_safetensors(path, header)
    if head.startswith(b"PK\x03\x04") or head.startswith(_TORCH_LEGACY_MAGIC):
        return _from_object(path, _torch_load(path), "torch")
    if head[:1] in (b"\x80", b"(", b"}", b"]", b"c"):  # pickle protocol 2+ / protocol 0-1 openings
        return _from_object(path, load_safe_pickle(path), "pickle")
    raise WeightsError(
        f"{path}: unknown file type (starts with {head[:8]!r}); expected a safetensors file, a torch checkpoint "
        f"(.pth/.pt), or a pickle of numpy arrays (.pdparams, c3d.pickle)"
    )


def _read_safetensors(path: Path, header: dict[str, Any]) -> RawWeights:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise WeightsError(f"{path}: corrupt safetensors file ({e}); download or copy it again") from None
    return RawWeights(tensors, header.get("__metadata__"), "safetensors")


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


def _torch_load(path: Path) -> Any:
    try:
        safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with safe_globals(_numpy_safe_globals()) if safe_globals else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
        check_no_object_arrays(obj)
        return obj
    except pickle.UnpicklingError as e:
        # weights_only refused a global: the checkpoint holds arbitrary objects (or a payload).
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path}: refused to load: the checkpoint holds Python objects that a weights file never needs "
            f"({first_line}); it is loaded with torch.load(weights_only=True) only. If you trust the file, "
            f"re-save just its state_dict with torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise WeightsError(
            f"{path}: corrupt or truncated torch checkpoint ({type(e).__name__}: {str(e).strip()[:200]}); "
            f"download or copy it again"
        ) from None


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]  # paddle.save of a Tensor inside a larger object: (internal name, ndarray)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _from_object(path: Path, obj: Any, container: str) -> RawWeights:
    """Find the state dict inside a loaded checkpoint object and keep its tensors."""
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path}: holds a {type(obj).__name__}, not a dict of weights; expected a state dict "
            f"(name -> tensor), optionally wrapped as {{'state_dict': ...}}"
        )
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(_as_tensor(v) is not None for v in inner.values()):
            log.debug("%s: weights found under %r", path, key)
            obj = inner
            break
    tensors, ignored = {}, []
    for key, value in obj.items():
        tensor = _as_tensor(value)
        if key == _PADDLE_NAME_MAP:
            continue
        if tensor is None or not isinstance(key, str):
            ignored.append(str(key))
        else:
            tensors[key] = tensor
    if not tensors:
        raise WeightsError(
            f"{path}: no tensors found (top-level keys: {', '.join(map(str, list(obj)[:8]))}); expected a state "
            f"dict of weights, optionally wrapped as {{'state_dict': ...}}"
        )
    return RawWeights(tensors, None, container, tuple(ignored))


__all__ = ["RawWeights", "read_raw"]
