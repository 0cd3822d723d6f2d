"""Caffe C3D's volume mean file (`sport1m_train16_128_mean.binaryproto`), read by a strict protobuf-wire parser.

The file is a Caffe `BlobProto` in protobuf's wire format. No protobuf or Caffe code is imported and nothing is
executed: the bytes are walked field by field, every length checked against what is left, and anything outside
the two known layouts of the message is refused.

    C3D (facebookarchive/C3D, v1.0)   num=1 channels=2 length=3 height=4 width=5 (varints), data=6 diff=7 (floats)
    BVLC Caffe (and C3D v1.1)         num=1 channels=2 height=3 width=4, data=5 diff=6 (floats),
                                      shape=7 (BlobShape: dim=1, int64s), double_data=8 double_diff=9

The two are told apart by field 5's wire type (a varint width, or float data). The mean must be 1 x 3 x T x H x W
(Sports-1M's: 1 x 3 x 16 x 128 x 171, channels B, G, R as Caffe read them with OpenCV) and finite.

Example:
    >>> from c3dnet.weights.caffe_mean import read_mean_file
    >>> mean = read_mean_file("sport1m_train16_128_mean.binaryproto")   # doctest: +SKIP
    >>> mean.shape                                                      # doctest: +SKIP
    (3, 16, 128, 171)
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from c3dnet.errors import WeightsError

MAX_FILE = 256 * 2**20
"""Largest mean file read (Sports-1M's is 4.2 MB)."""
MAX_DIM = 4096
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Malformed(ValueError):
    pass


class _Wire:
    """A cursor over protobuf wire bytes that refuses anything truncated or oversized."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def done(self) -> bool:
        return self.at >= len(self.data)

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self.at >= len(self.data):
                raise _Malformed(f"a varint cut off at byte {self.at}")
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value >= 1 << 64:
                    raise _Malformed(f"a varint over 64 bits at byte {self.at}")
                return value
        raise _Malformed(f"a varint longer than 10 bytes at byte {self.at}")

    def take(self, n: int) -> memoryview:
        if n > len(self.data) - self.at:
            raise _Malformed(f"a field of {n:,} bytes at byte {self.at} with only {len(self.data) - self.at:,} left")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def fields(self):
        """(field number, wire type, value): an int for varints, bytes for the rest."""
        while not self.done():
            start = self.at
            tag = self.varint()
            number, kind = tag >> 3, tag & 7
            if number < 1 or number > 1 << 29:
                raise _Malformed(f"field number {number} at byte {start}")
            if kind == _VARINT:
                yield number, kind, self.varint()
            elif kind == _FIXED64:
                yield number, kind, self.take(8)
            elif kind == _BYTES:
                yield number, kind, self.take(self.varint())
            elif kind == _FIXED32:
                yield number, kind, self.take(4)
            else:
                raise _Malformed(f"wire type {kind} (groups are not used by Caffe) at byte {start}")


def _int32(value: int, name: str) -> int:
    if value >= 1 << 63:
        value -= 1 << 64  # a negative int32/int64 is sent as a 10-byte two's complement varint
    if not 0 <= value <= MAX_DIM:
        raise _Malformed(f"{name} = {value} (expected 0 to {MAX_DIM})")
    return value


def parse_blob_proto(data: bytes | memoryview) -> tuple[tuple[int, ...], np.ndarray]:
    """The shape and float32 values of a Caffe `BlobProto` message (either layout in the module docstring).

    Raises:
        ValueError: anything but a well-formed BlobProto (with the byte offset where it went wrong).
    """
    view = memoryview(data)
    # Field 5 is C3D's width (a varint) or BVLC's float data: one pass to tell, one to read (no copies).
    c3d_layout = any(number == 5 and kind == _VARINT for number, kind, _ in _Wire(view).fields())
    float_fields, int_fields = ((6, 7), (1, 2, 3, 4, 5)) if c3d_layout else ((5, 6), (1, 2, 3, 4))
    ints: dict[int, int] = {}
    floats: dict[int, bytearray] = {}
    shape_messages: list[memoryview] = []
    for number, kind, value in _Wire(view).fields():
        if number in int_fields and kind == _VARINT:
            if number in ints:
                raise _Malformed(f"field {number} given twice")
            ints[number] = _int32(value, f"field {number}")
        elif number in float_fields and kind in (_BYTES, _FIXED32):
            if len(value) % 4:
                raise _Malformed(f"packed floats of {len(value)} bytes in field {number}")
            floats.setdefault(number, bytearray()).extend(value)
        elif not c3d_layout and number == 7 and kind == _BYTES:
            shape_messages.append(value)
        elif not c3d_layout and number in (8, 9) and kind in (_BYTES, _FIXED64):
            if len(value):
                raise _Malformed(f"double-precision data (field {number}); the C3D mean is float")
        else:
            raise _Malformed(f"field {number} with wire type {kind}, which a BlobProto does not have")
    if shape_messages:
        dims = []
        for message in shape_messages:
            for number, kind, value in _Wire(message).fields():
                if number != 1 or kind not in (_VARINT, _BYTES):
                    raise _Malformed(f"BlobShape field {number} with wire type {kind}")
                if kind == _VARINT:
                    dims.append(_int32(value, "a shape dimension"))
                else:
                    packed = _Wire(value)
                    while not packed.done():
                        dims.append(_int32(packed.varint(), "a shape dimension"))
        shape = tuple(dims)
    else:
        names = (1, 2, 3, 4, 5) if c3d_layout else (1, 2, 3, 4)
        shape = tuple(ints.get(n, 0) for n in names)
    if not shape or len(shape) > 8 or any(d < 1 for d in shape):
        raise _Malformed(f"blob shape {shape} (every dimension must be >= 1)")
    values = floats.get(6 if c3d_layout else 5, bytearray())
    count = math.prod(shape)
    if len(values) != 4 * count:
        raise _Malformed(f"{len(values) // 4:,} values for a blob of shape {shape} ({count:,} values)")
    return shape, np.frombuffer(values, dtype="<f4").astype(np.float32).reshape(shape)


def read_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Caffe C3D's volume mean as float32 (3, T, H, W), channels in the file's (Caffe's B, G, R) order.

    Raises:
        WeightsError: not a readable BlobProto, not 1 x 3 x T x H x W, non-finite values, or a file over
        `MAX_FILE` bytes; the message names the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise WeightsError(f"{path}: not a regular file; give the .binaryproto mean file")
        if size > MAX_FILE:
            raise WeightsError(f"{path}: {size:,} bytes, more than a mean file has (at most {MAX_FILE:,} read)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such mean file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the mean file ({e.strerror or e})") from None
    try:
        shape, values = parse_blob_proto(data)
    except (_Malformed, struct.error) as e:
        raise WeightsError(f"{path}: not a Caffe mean file (BlobProto): {e}; give the .binaryproto that came with "
                           f"the Caffe C3D model") from None
    if len(shape) == 4:  # a 2D Caffe mean (num, channels, height, width): a one-frame volume
        shape, values = (*shape[:2], 1, *shape[2:]), values.reshape(*shape[:2], 1, *shape[2:])
    if len(shape) != 5 or shape[:2] != (1, 3):
        raise WeightsError(f"{path}: a mean blob of shape {shape}; expected 1 x 3 x frames x height x width "
                           f"(Sports-1M's is 1 x 3 x 16 x 128 x 171)")
    if not np.isfinite(values).all():
        raise WeightsError(f"{path}: the mean holds NaN or infinite values; the file is corrupt")
    return values[0]


__all__ = ["MAX_FILE", "parse_blob_proto", "read_mean_file"]
