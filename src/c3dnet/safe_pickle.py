"""A restricted unpickler for weight files: it rebuilds numpy arrays and plain containers, and nothing else.

PaddlePaddle `.pdparams` files and Caffe conversions such as `c3d.pickle` are pickles, and a pickle can name
any importable callable (`os.system`, `builtins.eval`, ...) and have it called while loading. Weight files come
from the internet, so this unpickler resolves only the handful of globals that numpy array reconstruction
needs; any other global, a persistent id, or an object dtype stops the load before anything runs.

Resources are bounded too, since a pickle of a few hundred bytes can describe an exponential structure or ask
for gigabytes:
- Arrays get their memory only from bytes in the file: `numpy.ndarray(shape, dtype)` called directly, and
  `_reconstruct` of an array that never receives its data (its `BUILD` state), are refused, and every array's
  byte count must equal its shape times its item size.
- The loaded structure is checked in one linear pass (each object once, by id), with bounds on the number of
  references, the nesting depth, and no container that contains itself.
- Every length in the file is checked against the bytes left before anything is read or allocated for it
  (the pure-Python unpickler: the C one sizes its memo by any index the file names).
- Arrays are read-only views of the pickle's bytes (no second copy of the weights is made).

Example:
    >>> from c3dnet.safe_pickle import load_safe_pickle
    >>> state = load_safe_pickle("model.pdparams")     # doctest: +SKIP
    >>> state["backbone.fc6.weight"].shape              # doctest: +SKIP
    (8192, 4096)
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from c3dnet.errors import WeightsError

MAX_REFERENCES = 2_000_000
"""Most container entries (references, counting repeats) a loaded structure may have."""
MAX_DEPTH = 64
"""Deepest container nesting a loaded structure may have (weight files nest 2-4 levels)."""
MAX_NDIM = 32
# Scalar kinds a weight file can need: bool, signed/unsigned int, float, complex, bytes and str.
_ARRAY_KINDS = frozenset("biufcSU")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list; nothing it asked for was run."""


class StructureError(pickle.UnpicklingError):
    """The loaded structure is too large, too deep, cyclic, or holds an array without data."""


def check_dtype(dtype: Any) -> np.dtype:
    """`dtype` if it is a plain numeric, bytes or str dtype; raises `UnsafePickleError` otherwise."""
    if isinstance(dtype, _DtypeRecord):
        dtype = dtype.dtype
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"an array of dtype {type(dtype).__name__}")
    if dtype.hasobject:  # object arrays would unpickle arbitrary Python objects
        raise UnsafePickleError(f"a numpy array of Python objects (dtype {dtype})")
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None or not dtype.itemsize:
        raise UnsafePickleError(f"a numpy array of dtype {dtype} (weights are plain numbers)")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if type(shape) not in (tuple, list) or len(shape) > MAX_NDIM:
        raise StructureError(f"an array shape that is not a tuple of at most {MAX_NDIM} sizes ({shape!r:.80})")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise StructureError(f"an array shape of other than non-negative integers ({shape!r:.80})")
    return tuple(shape)


def _as_buffer(data: Any) -> bytes | bytearray | memoryview:
    if isinstance(data, str):  # Python 2 pickles read with encoding="latin1": the raw bytes as latin1 text
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, pickle.PickleBuffer):
        return data.raw()
    raise StructureError(f"array data of type {type(data).__name__} (expected bytes)")


def _array_from(data: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    """A read-only array over `data`, whose length must be exactly shape x itemsize."""
    dtype, shape = check_dtype(dtype), _shape(shape)
    buffer = _as_buffer(data)
    expected = math.prod(shape) * dtype.itemsize
    if memoryview(buffer).nbytes != expected:
        raise StructureError(
            f"an array of shape {shape} and dtype {dtype} ({expected} bytes) with {memoryview(buffer).nbytes} "
            f"bytes of data"
        )
    if expected == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(buffer, dtype).reshape(shape, order="F" if fortran else "C")


class _NDArrayType:
    """What the global `numpy.ndarray` resolves to: an argument for `_reconstruct`, never callable.

    Called directly, `numpy.ndarray(shape, dtype)` returns uninitialised memory (whatever the process freed
    last), which `c3d convert` would then write out as weights.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafePickleError("numpy.ndarray(...) called directly (an array of uninitialised memory)")

    def __reduce__(self) -> Any:  # pragma: no cover - never pickled
        raise TypeError("not picklable")


_NDARRAY = _NDArrayType()


class _PendingArray:
    """What `_reconstruct` returns: an array that exists once `BUILD` gives it shape, dtype and data."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise StructureError("an array given its data twice")
        if type(state) is not tuple or len(state) not in (4, 5):
            raise StructureError(f"an array state that is not (version, shape, dtype, fortran, data) ({state!r:.80})")
        if len(state) == 5:
            if state[0] != 1:
                raise StructureError(f"array state version {state[0]!r}")
            state = state[1:]
        shape, dtype, fortran, data = state
        self.array = _array_from(data, dtype, shape, bool(fortran))


class _DtypeRecord:
    """What `numpy.dtype(code, align, copy)` returns in a pickle: a type code whose `BUILD` may set only its
    byte order.

    numpy's own `dtype.__setstate__` would accept fields, sub-arrays and flags from the file (and fails with a
    SystemError on some malformed states); here the state is read and a fresh dtype made from code and byte
    order, so numpy's shared dtypes are never modified.
    """

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if type(state) is not tuple or not ((len(state) == 8 and state[0] == 3) or (len(state) == 9 and state[0] == 4)):
            raise StructureError(f"a dtype state that is not numpy's (3 or 4, byte order, ...) ({state!r:.80})")
        order, subarray, names, fields, elsize = state[1:6]
        if subarray is not None or names is not None or fields is not None or (len(state) == 9 and state[8]):
            raise UnsafePickleError("a structured or sub-array dtype (weights are plain numbers)")
        if order not in ("<", ">", "|", "=") or type(elsize) is not int or elsize not in (-1, self.dtype.itemsize):
            raise StructureError(f"a dtype state with byte order {order!r:.10} and item size {elsize!r:.20}")
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> _DtypeRecord:
    if not isinstance(obj, str) or len(obj) > 16:
        raise UnsafePickleError(f"numpy.dtype of a {type(obj).__name__} (only type codes such as 'f4')")
    dtype = np.dtype(obj)
    if dtype.hasobject:
        raise UnsafePickleError(f"a numpy array of Python objects (dtype {dtype})")
    return _DtypeRecord(dtype)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dtype = check_dtype(dtype)
    if data is None:
        return dtype.type(0)
    buffer = _as_buffer(data)
    if memoryview(buffer).nbytes != dtype.itemsize:
        raise StructureError(f"a numpy scalar of dtype {dtype} with {memoryview(buffer).nbytes} bytes of data")
    return np.frombuffer(buffer, dtype)[0].copy()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PendingArray:
    # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') followed by BUILD with the real state;
    # anything else would allocate an array of `shape` that no data ever fills.
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"an array of type {subtype!r:.80}")
    if shape not in ((0,), [0]) or typecode not in (b"b", "b"):
        raise UnsafePickleError(f"numpy _reconstruct of shape {shape!r:.80} (uninitialised memory)")
    return _PendingArray()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Pickle protocol 5 stores contiguous arrays this way (numpy's __reduce_ex__).
    if order not in ("C", "F"):
        raise StructureError(f"array order {order!r:.20}")
    return _array_from(buffer, dtype, shape, order == "F")


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


def _bytes(*args: Any) -> bytes:
    # Protocol 2 writes an empty bytes object (an empty array's data) as bytes(); nothing else is needed.
    if args:
        raise UnsafePickleError("builtins.bytes with arguments")
    return b""


def _ordered_dict(items: Any = ()) -> collections.OrderedDict:
    if type(items) not in (tuple, list, dict, collections.OrderedDict):
        raise UnsafePickleError(f"collections.OrderedDict of a {type(items).__name__}")
    return collections.OrderedDict(items)


# (module, name) -> what it resolves to. Both numpy module spellings appear in files in the wild.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}
for _module in ("builtins", "__builtin__"):  # protocol 2 writes Python 2's module name
    _ALLOWED[(_module, "tuple")] = _tuple
    _ALLOWED[(_module, "bytes")] = _bytes
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer

ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))
"""The only globals a weight pickle may name."""
_ALLOWED_TEXT = f"only numpy arrays and plain containers are allowed: {', '.join(ALLOWED_GLOBALS)}"


class InertObject:
    """A stand-in for an object of a known-inert metadata class: it records what the pickle gave it, nothing more.

    mmengine and mmaction2 checkpoints keep training bookkeeping beside the weights (`message_hub` with its
    `HistoryBuffer`s, the `ConfigDict` of the run, a scheduler's `Counter` of milestones). Their real classes
    are never imported or called: the pickle's `NEWOBJ`/`REDUCE` arguments, its `BUILD` state and any items it
    appends or sets are kept here as plain data, checked and bounded like the rest, and then dropped.
    Subclasses (one per name in `INERT_GLOBALS`) carry the global's name.
    """

    __slots__ = ("args", "state", "items")
    global_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = (*args, *kwargs.items()), None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: `__new__` kept the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict subclass (ConfigDict)
        self.items.append((key, value))

    def append(self, value: Any) -> None:  # APPEND(S) on a list subclass
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __reduce__(self) -> Any:  # pragma: no cover - never written back
        raise TypeError(f"a placeholder for {self.global_name} cannot be pickled")

    def __repr__(self) -> str:
        return f"<{self.global_name} (not loaded)>"


INERT_GLOBALS: tuple[str, ...] = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "mmengine.logging.message_hub.MessageHub",
    "mmengine.config.config.ConfigDict",
    "mmengine.config.config.Config",
    "mmcv.utils.config.ConfigDict",
    "mmcv.utils.config.Config",
    "mmcv.Config",
    "mmcv.ConfigDict",
    "addict.addict.Dict",
    "collections.Counter",
    "collections.defaultdict",
    "torch.torch_version.TorchVersion",
)
"""Classes whose objects in checkpoint metadata become `InertObject`s (see `inert_globals`); any other global
outside `ALLOWED_GLOBALS` is still refused."""


def inert_globals() -> dict[tuple[str, str], type[InertObject]]:
    """(module, name) -> its placeholder class, for each of `INERT_GLOBALS`."""
    table = {}
    for full in INERT_GLOBALS:
        module, _, name = full.rpartition(".")
        table[(module, name)] = type(f"Inert{name}", (InertObject,), {"__slots__": (), "global_name": full})
    return table


class BoundedReader(io.RawIOBase):
    """A file that refuses reads beyond its end: every length in a pickle is exact, so a longer one is a
    truncated or corrupt file, and nothing is read (or allocated) for it."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        super().__init__()
        self._file, self._left, self.size = file, size, size

    def readable(self) -> bool:
        return True

    def _take(self, n: int) -> int:
        if n > self._left:
            raise pickle.UnpicklingError(f"pickle data was truncated ({n:,} bytes asked for, {self._left:,} left)")
        self._left -= n
        return n

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._file.readinto(view[: self._take(len(view))])
        if n != len(view):
            raise pickle.UnpicklingError("pickle data was truncated (the file changed while being read)")
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(self._take(self._left if size is None or size < 0 else size))
        if len(data) != size and size is not None and size >= 0:
            raise pickle.UnpicklingError("pickle data was truncated (the file changed while being read)")
        return data

    def readline(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        line = self._file.readline(size)
        self._left -= len(line)
        return line


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, restricted to the globals in `allowed` (a subclass may add to them).

    Not the C one: its memo is an array indexed by the file's `LONG_BINPUT` numbers, and a 5-byte opcode with
    index 2**27 makes it allocate and zero 2 GB. Here the memo is a dict, and every length is checked against
    the file before anything is allocated for it.
    """

    allowed: dict[tuple[str, str], Any] = _ALLOWED

    def __init__(self, file: BoundedReader, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._size = file.size

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise pickle.UnpicklingError(f"a bytearray of {n:,} bytes in a file of {self._size:,}")
        buffer = bytearray(n)
        if self.readinto(buffer) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(buffer)

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the global `{module}.{name}`") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"a persistent id {pid!r:.80}")


_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), np.dtype)
_KEY_TYPES = (str, bytes, int, float, bool, type(None), tuple)


def pickle_leaf(obj: Any) -> Any:
    """What a leaf of a restricted pickle may be: atoms, arrays that received their data, numpy scalars."""
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise StructureError("an array that never received its data (numpy _reconstruct without its state)")
        return obj.array
    if isinstance(obj, np.ndarray):
        check_dtype(obj.dtype)
        return obj
    if isinstance(obj, np.generic):
        check_dtype(obj.dtype)
        return obj
    if isinstance(obj, _DtypeRecord):
        return obj.dtype
    if isinstance(obj, _ATOMS):
        return obj
    raise UnsafePickleError(f"an object of type {type(obj).__name__}")


def check_structure(obj: Any, leaf: Callable[[Any], Any] = pickle_leaf, max_references: int = MAX_REFERENCES,
                    max_depth: int = MAX_DEPTH) -> Any:
    """Check a loaded structure in linear time and return it with each leaf replaced by `leaf(leaf)`.

    Every container is visited once (by id), however often it is referenced, so a list holding two references
    to a list, nested 45 levels, costs 90 steps rather than 2**45. Dicts and lists are updated in place;
    tuples, sets and frozensets are rebuilt when a leaf inside them changes.

    Args:
        obj: what an unpickler returned.
        leaf: called once per distinct non-container object; returns what replaces it, or raises.
        max_references: most container entries (keys and values, repeats included) in the whole structure.
        max_depth: deepest nesting of containers.

    Raises:
        StructureError: more references or deeper nesting than allowed, or a container that contains itself.
        UnsafePickleError: whatever `leaf` refuses.
    """
    done: dict[int, Any] = {}
    active: set[int] = set()
    count = 0

    def visit(x: Any, depth: int) -> Any:
        nonlocal count
        key = id(x)
        if key in done:
            return done[key]
        if key in active:
            raise StructureError("a container that contains itself")
        if isinstance(x, InertObject):  # its arguments, state and items, checked like a tuple of them
            active.add(key)
            x.args, x.state, x.items = visit((x.args, x.state, x.items), depth)
            active.discard(key)
            done[key] = x
            return x
        if isinstance(x, (dict, list, tuple, set, frozenset)):
            if depth >= max_depth:
                raise StructureError(f"containers nested more than {max_depth} levels deep")
            count += len(x) * (2 if isinstance(x, dict) else 1)
            if count > max_references:
                raise StructureError(f"more than {max_references:,} references in one structure")
            active.add(key)
            if isinstance(x, dict):
                for k in x:  # keys stay as they are: atoms, or tuples of them
                    if not isinstance(k, _KEY_TYPES) or (isinstance(k, tuple) and visit(k, depth + 1) is not k):
                        raise StructureError(f"a dict key of type {type(k).__name__}")
                for k, v in x.items():
                    new = visit(v, depth + 1)
                    if new is not v:
                        x[k] = new
                result: Any = x
            elif isinstance(x, list):
                for i, v in enumerate(x):
                    new = visit(v, depth + 1)
                    if new is not v:
                        x[i] = new
                result = x
            else:
                items = [visit(v, depth + 1) for v in x]
                result = x
                if any(a is not b for a, b in zip(items, x)):
                    if type(x) is not tuple:  # sets hold only hashable atoms; tuple subclasses are torch's own
                        raise StructureError(f"an array inside a {type(x).__name__}")
                    result = tuple(items)
            active.discard(key)
        else:
            result = leaf(x)
        done[key] = result
        return result

    try:
        return visit(obj, 0)
    finally:
        done.clear()  # `visit` is a closure referring to itself: free what it saw now, not at the next GC


def restricted_load(file: IO[bytes], size: int, source: str,
                    unpickler: Callable[[BoundedReader], pickle.Unpickler] | None = None,
                    leaf: Callable[[Any], Any] = pickle_leaf, what: str = "the pickle",
                    allowed: str = _ALLOWED_TEXT,
                    unsafe_loaders: str = "plain pickle, paddle.load or torch.load(weights_only=False)") -> Any:
    """Unpickle `size` bytes of `file` with a restricted unpickler, check the structure, map errors to WeightsError.

    Args:
        file: the pickle's bytes, from their start.
        size: how many bytes the pickle may read.
        source: the file name used in error messages.
        unpickler: makes the unpickler for a `BoundedReader` (default: `RestrictedUnpickler`, latin1 strings).
        leaf: passed to `check_structure`.
        what, allowed, unsafe_loaders: wording of the refusal ("the pickle", what is allowed, which loaders
            would have run code).
    """
    try:
        reader = BoundedReader(file, size)
        # latin1 reads Python 2 pickles (old Caffe conversions): their str arrays' raw bytes survive intact.
        loader = unpickler(reader) if unpickler else RestrictedUnpickler(reader, encoding="latin1")
        obj = loader.load()
        del loader  # its memo holds every bytes object; the arrays keep only their own
        return check_structure(obj, leaf)
    except UnsafePickleError as e:
        raise WeightsError(
            f"{source}: refused to load: {what} asks for {e}, which weight files never need ({allowed}). Loading "
            f"it with {unsafe_loaders} could run code from it; treat the file as untrusted and get the weights "
            f"from a trusted source"
        ) from None
    except StructureError as e:
        raise WeightsError(
            f"{source}: refused to load: {what} holds {e}, which no weight file does; the file is corrupt "
            f"or hostile, get the weights from a trusted source"
        ) from None
    except MemoryError:
        raise WeightsError(
            f"{source}: not a readable weights pickle (a length in it asks for more memory than the file could "
            f"hold); the file is truncated or corrupt, download or copy it again"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, UnicodeDecodeError, RecursionError, struct.error, SystemError) as e:
        message = str(e).splitlines()[0][:200] if str(e) else ""
        raise WeightsError(
            f"{source}: not a readable weights pickle ({type(e).__name__}: {message}); the file is truncated or "
            f"corrupt, download or copy it again"
        ) from None


def loads_safe_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` admitting only numpy arrays, numbers, strings, bytes and plain containers.

    Arrays come back read-only (views of the pickle's bytes); copy one to change it.

    Args:
        data: the pickle's bytes.
        source: the file name used in error messages.

    Raises:
        WeightsError: the pickle asks for anything else (it may be malicious), is too large or deep for a
        weight file, or is truncated or corrupt.
    """
    return restricted_load(io.BytesIO(data), len(data), source)


def load_safe_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle file through the restricted unpickler (see `loads_safe_pickle`), streaming from disk."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return restricted_load(f, os.fstat(f.fileno()).st_size, str(path))
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror or e})") from None


__all__ = [
    "ALLOWED_GLOBALS",
    "INERT_GLOBALS",
    "BoundedReader",
    "InertObject",
    "RestrictedUnpickler",
    "MAX_DEPTH",
    "MAX_REFERENCES",
    "StructureError",
    "UnsafePickleError",
    "check_dtype",
    "check_structure",
    "inert_globals",
    "load_safe_pickle",
    "loads_safe_pickle",
    "pickle_leaf",
    "restricted_load",
]
