"""Hostile values and files for the weight-loading tests: the objects a crafted weight file holds, and the
files of issue 17.

`hostile_value` gives what the fuzzer puts in place of a weight (nested shared lists, deep nesting, cycles,
direct `numpy.ndarray` calls, arrays without data or with the wrong byte count, payloads, expanded views, odd
dtypes and shapes); `hostile_files` writes the issue's examples (the 2**45-path pickles, lying native
metadata, malformed headers, a zip bomb, a zero-stride view). Both build on a tiny C3D (`tiny_model`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.model import C3D, C3DConfig
from c3dnet.weights import save_model

CONFIG = C3DConfig(num_classes=3, width_mult=1 / 64, fc_dim=4, clip_len=8, crop_size=32)
"""The fuzzer's model: widths 1-2-4-8-8, fc 4, 3 classes; its files are about 30 kB."""


def tiny_model() -> C3D:
    """The fuzzer's C3D (`CONFIG`), seeded, with non-zero biases and three class names."""
    torch.manual_seed(0)
    model = C3D(CONFIG, class_names=["walk", "run", "jump"]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(0.0, 0.1)
    return model


def torch_bytes(obj: Any, zip_format: bool) -> bytes:
    """What `torch.save(obj)` writes: the zip format, or the legacy pre-1.6 one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


def split_native(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's parsed header and the data after it."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8: 8 + n]), data[8 + n:]


def join_native(header: Any, body: bytes, rng: random.Random | None = None) -> bytes:
    """The file for `header` (a dict or JSON text) and `body`; with `rng`, a wrong length field."""
    text = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass")
    length = len(text)
    if rng is not None:
        length = rng.choice((0, 1, length - 1, length + 1, length + 100, 2**31, 2**63))
    return struct.pack("<Q", length % 2**64) + text + body


class Call:
    """Pickles as `func(*args)` (optionally with a BUILD state): what a hand-crafted hostile file holds."""

    def __init__(self, func: Any, *args: Any, state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> Any:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def nest_pairs(levels: int) -> list:
    x: list = []
    for _ in range(levels):
        x = [x, x]
    return x


def deep(levels: int) -> list:
    x: list = []
    for _ in range(levels):
        x = [x]
    return x


def hostile_value(rng: random.Random, like: Any, torch_file: bool) -> tuple[Any, str]:
    """A value to put in place of (or beside) a weight: valid variants and hostile objects."""
    from numpy._core import multiarray

    array = np.zeros(3, np.float32)  # unless `like` is a plain weight (an earlier mutation may have replaced it)
    if (isinstance(like, torch.Tensor) and like.layout == torch.strided and like.ndim
            and like.dtype in (torch.float16, torch.float32, torch.float64)):
        array = like.contiguous().numpy()
    elif isinstance(like, np.ndarray) and like.dtype.kind in "fiub" and like.dtype.isnative and like.ndim:
        array = like
    choices = [
        ("nest45", lambda: nest_pairs(45)),
        ("deep", lambda: deep(rng.choice((60, 70, 500)))),
        ("wide", lambda: [0] * rng.choice((1000, 100_000))),
        ("cycle", lambda: (lambda x: (x.append(x), x)[1])([1])),
        ("float16", lambda: array.astype(np.float16)),
        ("float64", lambda: array.astype(np.float64)),
        ("int8", lambda: array.astype(np.int8)),
        ("bool", lambda: array.astype(bool)),
        ("bigendian", lambda: array.astype(array.dtype.newbyteorder(">"))),
        ("fortran", lambda: np.asfortranarray(array)),
        ("transposed", lambda: array.T.copy()),
        ("flat", lambda: array.reshape(-1).copy()),
        ("extra-dim", lambda: array[None].copy()),
        ("empty", lambda: np.zeros((0,) + array.shape[1:], array.dtype)),
        ("scalar", lambda: np.float32(1.5)),
        ("string", lambda: "\x1b[2Jweights"),
        ("none", lambda: None),
        ("complex", lambda: array.astype(np.complex64)),
        ("unicode-array", lambda: np.array(["a", "b"])),
    ]
    if torch_file:
        tensor = torch.as_tensor(np.ascontiguousarray(array))
        choices += [
            ("expanded", lambda: torch.zeros(1).expand(rng.choice((10**6, 10**7)))),
            ("strided", lambda: torch.zeros(4).as_strided((10**4, 10**4), (0, 0))),
            ("view", lambda: tensor.reshape(-1)[1:].clone()[: max(tensor.numel() - 1, 0)]),
            ("bfloat16", lambda: tensor.to(torch.bfloat16)),
            ("complex-tensor", lambda: tensor.to(torch.complex64)),
            ("sparse", lambda: torch.zeros(3, 3).to_sparse()),
            ("int-tensor", lambda: tensor.to(torch.int64)),
            ("non-contiguous", lambda: tensor.t() if tensor.ndim == 2 else tensor.flip(0)),
        ]
    else:
        choices += [
            ("ndarray-call", lambda: Call(np.ndarray, (1000,), np.dtype("f4"))),
            ("reconstruct-no-state", lambda: Call(multiarray._reconstruct, np.ndarray, (0,), b"b")),
            ("reconstruct-shape", lambda: Call(multiarray._reconstruct, np.ndarray, (10**6,), b"b")),
            ("short-data", lambda: Call(multiarray._reconstruct, np.ndarray, (0,), b"b",
                                        state=(1, array.shape, array.dtype, False, array.tobytes()[:-4]))),
            ("long-data", lambda: Call(multiarray._reconstruct, np.ndarray, (0,), b"b",
                                       state=(1, (10**6,), np.dtype("f4"), False, array.tobytes()))),
            ("object-array", lambda: np.array([1, "a", None], dtype=object)),
            ("payload", lambda: Call(os.system, "true")),
            ("eval", lambda: Call(eval, "1+1")),
            ("tuple-of-str", lambda: Call(tuple, "abc")),
        ]
    name, make = rng.choice(choices)
    return make(), name


def hostile_files(folder: Path) -> dict[str, Path]:
    """The hostile files of issue 17, written to `folder`: each must be refused fast, within 2N + 64 MB."""
    from tests.test_weights import mmaction2_state, paddle_state

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    files: dict[str, bytes] = {}
    files["nest45.pdparams"] = pickle.dumps({"w": nest_pairs(45)}, protocol=2)  # 2**45 paths in 300 bytes
    files["nest45-weights.pdparams"] = pickle.dumps({**paddle_state(model), "x": nest_pairs(45)}, protocol=4)
    files["nest45.pth"] = torch_bytes({"w": nest_pairs(45)}, zip_format=True)
    files["nest45-meta.pth"] = torch_bytes({"state_dict": mmaction2_state(model, True), "meta": nest_pairs(45)},
                                            zip_format=True)
    files["ndarray.pdparams"] = pickle.dumps({"w": Call(np.ndarray, (10**8,), np.dtype("f4"))}, protocol=2)
    files["deep.pdparams"] = b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b"."
    path = folder / "tmp.safetensors"
    save_model(model, path)
    native = path.read_bytes()
    path.unlink()
    header, body = split_native(native)
    for name, change in (("fc_dim", 2_000_000), ("num_classes", 1_000_000_000), ("width_mult", 10000.0)):
        edited = json.loads(json.dumps(header))
        config = json.loads(edited["__metadata__"]["config"])
        config[name] = change
        edited["__metadata__"]["config"] = json.dumps(config)
        files[f"meta-{name}.safetensors"] = join_native(edited, body)
    entry = '{"conv1a.weight":{"dtype":"F32","shape":[1],"data_offsets":%s}}'
    for name, offsets in (("int", "5"), ("str", '"abc"'), ("empty", "[]")):
        files[f"offsets-{name}.safetensors"] = join_native(entry % offsets, bytes(4))
    files["brackets.safetensors"] = join_native('{"a":' + "[" * 200_000 + "]" * 200_000 + "}", b"")
    # A zip bomb: 200 MB of zeros deflated to 200 kB, declared as the storage of a 50M-element tensor.
    source = zipfile.ZipFile(io.BytesIO(torch_bytes({"conv1a.weight": torch.zeros(4)}, zip_format=True)))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04", b"J" + struct.pack("<i", 50_000_000))
            if "/data/" in info.filename:
                target = zipfile.ZipInfo(info.filename)
                target.compress_type = zipfile.ZIP_DEFLATED
                with out.open(target, "w", force_zip64=True) as f:
                    chunk, left = bytes(1 << 24), 200_000_000
                    while left:
                        f.write(chunk[: min(left, len(chunk))])
                        left -= min(left, len(chunk))
                continue
            out.writestr(info.filename, data)
    files["bomb.pth"] = bomb.getvalue()
    files["zero-stride.pth"] = torch_bytes({"conv1a.weight": torch.zeros(1).expand(50_000_000)}, zip_format=True)
    files.update(_mmengine_and_mean_files(model))
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def _mmengine_and_mean_files(model: C3D) -> dict[str, bytes]:
    """An mmengine checkpoint whose placeholder holds a payload, or 2**45 paths; Caffe mean files that declare
    a 2**62-byte field, or dimensions of 4096**5 values over 4 bytes of data."""
    from tests.test_caffe_mean import field, varint
    from tests.test_mmengine_checkpoints import HistoryBuffer, fake_mmengine, mmengine_checkpoint

    files = {}
    for name, value in (("payload", Call(os.system, "true")), ("nest45", nest_pairs(45))):
        buffer = HistoryBuffer()
        buffer.extra = value
        with fake_mmengine():
            files[f"mmengine-{name}.pth"] = torch_bytes(mmengine_checkpoint(model, {"message_hub": {"b": buffer}}),
                                                        zip_format=True)
    dims = b"".join(field(i, 0, varint(v)) for i, v in enumerate((1, 3, 16, 128, 171), 1))
    files["mean-length.binaryproto"] = dims + varint(6 << 3 | 2) + varint(1 << 62) + bytes(8)
    files["mean-dims.binaryproto"] = b"".join(field(i, 0, varint(4096)) for i in range(1, 6)) + field(6, 2, bytes(4))
    return files


__all__ = ["CONFIG", "Call", "deep", "hostile_files", "hostile_value", "join_native", "nest_pairs", "split_native",
           "tiny_model", "torch_bytes"]
