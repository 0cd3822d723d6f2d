"""c3dnet's own reader for `torch.save`'s zip format: tensors out of any mmengine/mmaction2 checkpoint, no code run.

A torch zip holds `<archive>/data.pkl` (a pickle whose tensors point at storages by persistent id) and one
uncompressed entry per storage, `<archive>/data/<key>`. `torch.load(weights_only=True)` refuses every checkpoint
whose metadata holds mmengine's objects (`message_hub`, `HistoryBuffer`, `ConfigDict`, ...); this reader instead:

- unpickles `data.pkl` with `c3dnet.safe_pickle`'s restricted unpickler, extended with torch's tensor and
  storage rebuilds and with `InertObject` placeholders for the classes in `safe_pickle.INERT_GLOBALS` (never
  imported, never called); any other global is refused, as before;
- checks every storage reference (a known entry of exactly `numel x item size` bytes) and every tensor view
  (its extent inside its storage, no expanded views) while unpickling, without reading any weight bytes;
- reads a storage only when a tensor that the caller keeps needs it (`TensorRef.load`): the weights under
  `state_dict`, never an optimizer's state. Each storage is read once, straight from the file into its tensor's
  buffer, and its CRC-32 checked.

Example:
    >>> from c3dnet.weights.torchzip import read_torch_zip
    >>> obj = read_torch_zip(Path("c3d_ucf101.pth"))                       # doctest: +SKIP
    >>> obj["state_dict"]["backbone.conv1a.conv.weight"].load().shape     # doctest: +SKIP
    torch.Size([64, 3, 3, 3, 3])
"""

from __future__ import annotations

import collections
import io
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from c3dnet.errors import WeightsError
from c3dnet.safe_pickle import (
    RestrictedUnpickler,
    StructureError,
    UnsafePickleError,
    inert_globals,
    pickle_leaf,
    restricted_load,
)

MAX_NDIM = 16
# torch.save's storage classes (the persistent id names one) -> the dtype of their elements.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_READ_CHUNK = 1 << 24


@dataclass(frozen=True)
class _StorageType:
    """What `torch.FloatStorage` and friends resolve to: a dtype, never a callable class."""

    name: str
    dtype: torch.dtype


class _Storages:
    """The storage entries of one torch zip, read on demand, each once."""

    def __init__(self, path: Path, entries: dict[str, zipfile.ZipInfo]) -> None:
        self.path, self.entries = path, entries
        self.refs: dict[str, StorageRef] = {}
        self.loaded: dict[str, torch.Tensor] = {}

    def ref(self, key: str, dtype: torch.dtype, numel: int) -> StorageRef:
        known = self.refs.get(key)
        if known is not None:
            if (known.dtype, known.numel) != (dtype, numel):
                raise StructureError(f"storage {key!r:.40} named twice with different types or sizes")
            return known
        info = self.entries.get(key)
        if info is None:
            raise StructureError(f"a storage {key!r:.40} that the archive does not hold")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.file_size != numel * itemsize:
            raise StructureError(f"storage {key!r:.40} of {numel:,} {dtype} elements ({numel * itemsize:,} bytes) "
                                 f"in an entry of {info.file_size:,} bytes")
        ref = self.refs[key] = StorageRef(self, key, dtype, numel)
        return ref

    def load(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """The storage's elements as a flat tensor, read straight from the file (CRC-32 checked)."""
        if key in self.loaded:
            return self.loaded[key]
        info = self.entries[key]
        buffer = bytearray(info.file_size)
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise WeightsError(f"{self.path}: corrupt torch checkpoint (storage {key!r} has no local header); "
                                   f"download or copy it again")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            view, crc, done = memoryview(buffer), 0, 0
            while done < len(buffer):
                n = f.readinto(view[done:done + _READ_CHUNK])
                if not n:
                    raise WeightsError(f"{self.path}: truncated torch checkpoint (storage {key!r} ends early); "
                                       f"download or copy it again")
                crc = zlib.crc32(view[done:done + n], crc)
                done += n
        if crc != info.CRC:
            raise WeightsError(f"{self.path}: corrupt torch checkpoint (storage {key!r} fails its CRC-32 check); "
                               f"download or copy it again")
        flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
        self.loaded[key] = flat
        return flat


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage entry named by the pickle, not read yet."""

    storages: _Storages
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor of the checkpoint, checked against its storage but not read: `load()` reads it."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.size) * torch.empty((), dtype=self.dtype).element_size()

    def load(self) -> torch.Tensor:
        flat = self.storage.storages.load(self.storage.key, self.dtype)
        return flat.as_strided(self.size, self.stride, self.offset)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > MAX_NDIM or not all(type(v) is int and v >= 0 for v in value):
        raise StructureError(f"a tensor {what} that is not a tuple of at most {MAX_NDIM} integers >= 0 ({value!r:.80})")
    return tuple(value)


def _empty(value: Any) -> bool:
    """None, or an empty dict: what torch writes for a tensor without backward hooks or extra state."""
    return value is None or (type(value) in (dict, collections.OrderedDict) and not value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> TensorRef:
    """torch._utils._rebuild_tensor_v2, checked: a view inside its storage, with no hooks."""
    if not isinstance(storage, StorageRef):
        raise UnsafePickleError(f"a tensor rebuilt from a {type(storage).__name__} (not a storage of the archive)")
    if type(offset) is not int or offset < 0:
        raise StructureError(f"a tensor at storage offset {offset!r:.40}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise StructureError(f"a tensor of size {size} with stride {stride}")
    if not (_empty(backward_hooks) and _empty(metadata)):
        raise UnsafePickleError("a tensor with backward hooks or metadata")
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
        raise StructureError(f"a tensor of size {size} at offset {offset} beyond its storage of {storage.numel:,} "
                             f"elements")
    ref = TensorRef(storage, offset, size, stride)
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    if numel > storage.numel:  # an expanded view (stride 0): a few bytes become gigabytes once copied
        raise StructureError(f"a tensor of shape {size} viewing a storage of only {storage.numel * itemsize} bytes")
    return ref


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Any:
    """torch._utils._rebuild_parameter(_with_state): the tensor itself (a Parameter is only a flag on it)."""
    if not isinstance(data, TensorRef) or not (_empty(backward_hooks) and _empty(state)):
        raise UnsafePickleError("a Parameter of other than a plain tensor")
    return data


class TorchZipUnpickler(RestrictedUnpickler):
    """`RestrictedUnpickler` plus torch's tensor rebuilds, storage references and inert mmengine placeholders."""

    allowed = {
        **RestrictedUnpickler.allowed,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
        **{("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", torch.uint8)},
        **inert_globals(),
    }

    def __init__(self, file: Any, storages: _Storages) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def persistent_load(self, pid: Any) -> Any:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"a persistent id {pid!r:.80} (torch checkpoints name storages only)")
        _, kind, key, _location, numel = pid  # the location is ignored: everything is read to the CPU
        if not isinstance(kind, _StorageType):
            raise UnsafePickleError(f"a storage of type {kind!r:.60}")
        if type(key) is not str or type(numel) is not int or numel < 0:
            raise StructureError(f"a storage reference {pid!r:.80}")
        return self.storages.ref(key, kind.dtype, numel)


def _leaf(obj: Any) -> Any:
    return obj if isinstance(obj, TensorRef) else pickle_leaf(obj)


def _archive(path: Path) -> tuple[bytes, dict[str, zipfile.ZipInfo], dict[str, bytes]]:
    """data.pkl's bytes, the storage entries by key, and the small records (version, byteorder)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise WeightsError(f"{path}: a zip file but not a torch checkpoint ({len(pickles)} data.pkl "
                                   f"records); expected what torch.save writes")
            prefix = pickles[0].filename[: -len("data.pkl")]
            storages = {i.filename[len(prefix) + 5:]: i for i in infos if i.filename.startswith(prefix + "data/")}
            records = {name: archive.read(prefix + name)[:64] for name in ("version", "byteorder")
                       if prefix + name in archive.NameToInfo and archive.getinfo(prefix + name).file_size <= 64}
            data = archive.read(pickles[0])  # the pickle is small; reading it whole checks its CRC-32 first
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError) as e:
        raise WeightsError(f"{path}: corrupt or truncated torch checkpoint ({str(e)[:200]}); download or copy it "
                           f"again") from None
    return data, storages, records


def read_torch_zip(path: Path) -> Any:
    """The object `torch.save` wrote to `path` (a zip whose entries `files._check_torch_zip` bounds-checked),
    with each tensor a `TensorRef` and each inert metadata object an `InertObject`.

    Raises:
        WeightsError: a global outside the allowed and inert lists (nothing was run), a storage or view that does
        not fit, a big-endian file, or a damaged archive; the message names the file.
    """
    data, entries, records = _archive(path)
    version = records.get("version", b"").strip()
    if not version.isdigit() or not 1 <= int(version) <= 10:
        raise WeightsError(f"{path}: not a torch checkpoint c3dnet can read (its version record is "
                           f"{records.get('version', b'missing')!r:.40}); re-save it with torch.save")
    if records.get("byteorder", b"little").strip() != b"little":
        raise WeightsError(f"{path}: a big-endian torch checkpoint; re-save it with torch.save on a little-endian "
                           f"machine (x86, ARM)")
    storages = _Storages(path, entries)
    return restricted_load(
        io.BytesIO(data), len(data), str(path), unpickler=lambda reader: TorchZipUnpickler(reader, storages),
        leaf=_leaf, what="the checkpoint",
        allowed="tensors, numpy arrays, plain containers and the inert metadata classes of "
                "c3dnet.safe_pickle.INERT_GLOBALS are allowed",
        unsafe_loaders="torch.load(weights_only=False)",
    )


def is_tensor_like(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, TensorRef))


__all__ = ["MAX_NDIM", "StorageRef", "TensorRef", "TorchZipUnpickler", "is_tensor_like", "read_torch_zip"]
