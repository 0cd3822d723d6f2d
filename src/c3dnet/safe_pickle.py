"""A restricted unpickler for weight files: it rebuilds numpy arrays and plain containers, and nothing else.

PaddlePaddle `.pdparams` files and Caffe conversions such as `c3d.pickle` are pickles, and a pickle can name
any importable callable (`os.system`, `builtins.eval`, ...) and have it called while loading. Weight files come
from the internet, so this unpickler resolves only the handful of globals that numpy array reconstruction
needs; any other global, a persistent id, or an object dtype stops the load before anything runs.

Example:
    >>> from c3dnet.safe_pickle import load_safe_pickle
    >>> state = load_safe_pickle("model.pdparams")     # doctest: +SKIP
    >>> state["backbone.fc6.weight"].shape              # doctest: +SKIP
    (8192, 4096)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from c3dnet.errors import WeightsError

try:  # numpy >= 2 moved the pickling helpers to numpy._core; files name either module
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list; nothing it asked for was run."""


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays would unpickle arbitrary Python objects
        raise UnsafePickleError(f"a numpy array of Python objects (dtype {dtype})")
    return dtype


def _scalar(dtype: np.dtype, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"a numpy scalar of dtype {dtype!r}")
    return _multiarray.scalar(dtype, *args)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"an array of type {subtype!r}")
    return _multiarray._reconstruct(np.ndarray, shape, typecode)


def _frombuffer(buffer: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    # Pickle protocol 5 stores contiguous arrays this way (numpy's __reduce_ex__).
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"an array of dtype {dtype!r}")
    return _numeric._frombuffer(buffer, dtype, shape, order)


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    # Protocols 0-2 write bytes as _codecs.encode(str, "latin1"); allow exactly that and nothing else.
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("_codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _tuple(items: Any = ()) -> tuple[Any, ...]:
    # paddle.save writes each Tensor nested in a larger object as tuple((name, ndarray)); only a ready
    # tuple or list is accepted, so no iterator protocol of anything else is ever run.
    if type(items) not in (tuple, list):
        raise UnsafePickleError(f"builtins.tuple of a {type(items).__name__}")
    return tuple(items)


# (module, name) -> what it resolves to. Both numpy module spellings appear in files in the wild.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "tuple"): _tuple,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer

ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))
"""The only globals a weight pickle may name."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the global `{module}.{name}`") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"a persistent id {pid!r}")


def check_no_object_arrays(obj: Any, depth: int = 0) -> None:
    """Refuse object arrays that slipped in through `__setstate__`, at any nesting level."""
    if depth > 50:
        raise pickle.UnpicklingError("containers nested more than 50 levels deep")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError(f"a numpy array of Python objects (dtype {obj.dtype})")
    if isinstance(obj, dict):
        for value in obj.values():
            check_no_object_arrays(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            check_no_object_arrays(value, depth + 1)


def _load(file: IO[bytes], source: str) -> Any:
    try:
        # latin1 reads Python 2 pickles (old Caffe conversions): their str arrays' raw bytes survive intact.
        obj = _RestrictedUnpickler(file, encoding="latin1").load()
        check_no_object_arrays(obj)
        return obj
    except UnsafePickleError as e:
        raise WeightsError(
            f"{source}: refused to load: the pickle asks for {e}, which weight files never need (only numpy "
            f"arrays and plain containers are allowed: {', '.join(ALLOWED_GLOBALS)}). Loading it with plain "
            f"pickle, paddle.load or torch.load(weights_only=False) could run code from it; treat the file as "
            f"untrusted and get the weights from a trusted source"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise WeightsError(
            f"{source}: not a readable weights pickle ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupt, download or copy it again"
        ) from None


def loads_safe_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` admitting only numpy arrays, numbers, strings, bytes and plain containers.

    Args:
        data: the pickle's bytes.
        source: the file name used in error messages.

    Raises:
        WeightsError: the pickle asks for anything else (it may be malicious), or is truncated or corrupt.
    """
    return _load(io.BytesIO(data), source)


def load_safe_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle file through the restricted unpickler (see `loads_safe_pickle`), streaming from disk."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _load(f, str(path))
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror or e})") from None


__all__ = [
    "ALLOWED_GLOBALS",
    "UnsafePickleError",
    "check_no_object_arrays",
    "load_safe_pickle",
    "loads_safe_pickle",
]
