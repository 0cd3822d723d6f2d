"""Valid tiny weight files of every format, and the mutations the fuzzer applies to them.

Formats (bases): "native" (safetensors + c3dnet metadata), "paddle" (.pdparams, pickle protocol 4),
"mmaction2" (torch zip, {"state_dict": ..., "meta": ...} with numpy values in meta), "mmengine" (torch zip as
mmengine's runner saves it: message_hub with HistoryBuffers, Config/ConfigDict, optimizer state; read by c3dnet's
own torch-zip reader with inert placeholders), "caffe" (a protocol-0 pickle of numpy arrays in an OrderedDict, as
Python 2 conversion scripts wrote), "sequential" (a Sequential port saved in torch's legacy, pre-zip format),
"caffe-mean" (Caffe C3D's volume mean, a protobuf BlobProto, read by `c3dnet.weights.caffe_mean`).

Mutations, chosen per case by a seeded `random.Random`:
    bytes       flips, truncations, deleted, repeated or inserted spans, integers set to extremes; aimed mostly at
                the structural bytes (header, pickle opcodes, zip records) rather than the weights
    header      native: JSON header edits (data_offsets, shapes, dtypes, entries, length field, nesting)
    metadata    native: config / preprocess / class_names / extra edits (huge sizes, wrong types, escapes)
    opcodes     pickles (also inside torch files): an opcode's argument, length or global changed, opcodes
                dropped, repeated or inserted
    objects     the state re-saved with values from `tests.weights_hostile.hostile_value` (nested shared lists,
                deep nesting, cycles, direct numpy.ndarray calls, arrays without data or with the wrong byte
                count, payloads, expanded views, odd dtypes and shapes), keys renamed or dropped
    zip         torch zip records: data.pkl mutated and re-packed with valid CRCs, storages truncated or grown,
                records dropped or deflated, the version record changed
    protobuf    the mean file: a field's varint set to an extreme, a wire type changed, a field repeated or an
                unknown one added, the data's length prefix changed
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import random
import struct
import zipfile
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.weights import save_model
from tests.test_caffe_mean import varint
from tests.test_mmengine_checkpoints import fake_mmengine
from tests.weights_hostile import (
    CONFIG,
    deep,
    hostile_value,
    join_native,
    nest_pairs,
    split_native,
    tiny_model,
    torch_bytes,
)

EXTREMES = (0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1, -1, -2)


@dataclass
class Base:
    """A valid file of one format, and what the mutators need to know about it.

    Attributes:
        name: the format's name.
        ext: the file extension.
        data: the file's bytes.
        kind: "safetensors", "pickle", "torch-zip" or "torch-legacy".
        regions: (start, end) byte ranges of structure (header, pickle opcodes, zip headers) to aim at.
        state: the Python object the file holds, for re-saving with hostile values.
        protocol: the pickle protocol of "pickle" files.
    """

    name: str
    ext: str
    data: bytes
    kind: str
    regions: list[tuple[int, int]] = field(default_factory=list)
    state: Any = None
    protocol: int = 4
    pickles: tuple[int, ...] = (0,)


def _pickle_regions(data: bytes, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Byte ranges of a pickle's opcodes with their arguments' first bytes (lengths, not the long data
    they announce), and the offset just past its STOP."""
    regions, positions = [], []
    stream = io.BytesIO(data[start:])
    for op, _, pos in pickletools.genops(stream):
        positions.append(start + pos)
        if op.name == "STOP":
            break
    end = start + stream.tell()
    for here, after in zip(positions, positions[1:] + [end]):
        regions.append((here, min(after, here + 16)))
    return regions, end


def _zip_regions(data: bytes) -> list[tuple[int, int]]:
    regions = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            regions.append((info.header_offset, info.header_offset + 30 + len(info.filename)))
            if info.filename.endswith("data.pkl"):  # the local header's extra field pads the data to 64 bytes
                name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
                start = info.header_offset + 30 + name_len + extra_len
                regions += _pickle_regions(data[: start + info.file_size], start)[0]
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    regions.append((data.find(b"PK\x01\x02"), len(data)) if central >= 0 else (max(0, len(data) - 200), len(data)))
    return regions


def make_bases(folder: Path) -> dict[str, Base]:
    """Write and describe one valid tiny file per format (about 30 kB each)."""
    from tests.test_caffe_mean import c3d_blob
    from tests.test_mmengine_checkpoints import mmengine_checkpoint
    from tests.test_weights import caffe_state, mmaction2_state, paddle_state, sequential_state

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    bases: dict[str, Base] = {}

    path = folder / "native.safetensors"
    save_model(model, path, extra={"epoch": 3, "val": {"top1": 0.5}})
    data = path.read_bytes()
    bases["native"] = Base("native", ".safetensors", data, "safetensors",
                           [(0, 8 + struct.unpack("<Q", data[:8])[0])])

    paddle = paddle_state(model)
    data = pickle.dumps(paddle, protocol=4)
    bases["paddle"] = Base("paddle", ".pdparams", data, "pickle", _pickle_regions(data)[0], paddle, 4)

    meta = {"epoch": np.int64(45), "mmaction2_version": "1.2.0", "mean": np.array([104.0, 117.0, 128.0])}
    mm = {"state_dict": mmaction2_state(model, recognizer=True), "meta": meta}
    data = torch_bytes(mm, zip_format=True)
    bases["mmaction2"] = Base("mmaction2", ".pth", data, "torch-zip", _zip_regions(data), mm)

    with fake_mmengine():
        mmengine = mmengine_checkpoint(model)
        data = torch_bytes(mmengine, zip_format=True)
    bases["mmengine"] = Base("mmengine", ".pth", data, "torch-zip", _zip_regions(data), mmengine)

    mean = np.random.default_rng(0).uniform(60, 130, (1, 3, CONFIG.clip_len, CONFIG.crop_size + 8,
                                                      CONFIG.crop_size + 10)).astype(np.float32)
    data = c3d_blob(mean)
    header = len(data) - mean.nbytes
    bases["caffe-mean"] = Base("caffe-mean", ".binaryproto", data, "protobuf", [(0, header), (header, len(data))],
                               mean)

    caffe = OrderedDict((k, v.numpy()) for k, v in caffe_state(model).items())
    data = pickle.dumps(caffe, protocol=0)
    bases["caffe"] = Base("caffe", ".pickle", data, "pickle", _pickle_regions(data)[0], caffe, 0)

    sequential = sequential_state(model)
    data = torch_bytes(sequential, zip_format=False)
    regions, starts, at = [], [], 0
    for _ in range(5):  # magic, protocol, sys_info, the state, the storage keys; then raw storage data
        starts.append(at)
        found, at = _pickle_regions(data, at)
        regions += found
    bases["sequential"] = Base("sequential", ".pt", data, "torch-legacy", regions, sequential,
                               pickles=tuple(starts))
    for base in bases.values():
        (folder / f"{base.name}{base.ext}").write_bytes(base.data)
    return bases


# ------------------------------------------------------------------------------------------------------- bytes


def _position(base: Base, data: bytes, rng: random.Random) -> int:
    if base.regions and rng.random() < 0.8:
        start, end = rng.choice(base.regions)
        if start < len(data):
            return rng.randrange(start, max(start + 1, min(end, len(data))))
    return rng.randrange(len(data)) if data else 0


def mutate_bytes(base: Base, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One byte-level mutation of `data`, aimed mostly at the structural regions."""
    data = bytearray(data)
    kind = rng.choice(("flip", "flip", "flip", "truncate", "delete", "repeat", "insert", "integer", "splice"))
    at = _position(base, data, rng)
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            i = _position(base, data, rng)
            if i < len(data):
                data[i] ^= rng.choice((1, 2, 4, 8, 16, 32, 64, 128, 255, rng.randrange(1, 256)))
    elif kind == "truncate":
        data = data[: at if rng.random() < 0.7 else rng.randrange(len(data) + 1)]
    elif kind == "delete":
        del data[at: at + rng.choice((1, 2, 4, 8, 100))]
    elif kind == "repeat":
        span = data[at: at + rng.choice((1, 2, 8, 64))]
        data[at:at] = span * rng.choice((1, 2, 100))
    elif kind == "insert":
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 9))))
    elif kind == "integer":
        width = rng.choice((1, 2, 4, 8))
        value = rng.choice(EXTREMES) % (1 << (8 * width))
        data[at: at + width] = value.to_bytes(width, "little")
    else:
        other = rng.randrange(len(data)) if data else 0
        data[at: at + 16] = data[other: other + 16]
    return bytes(data), f"bytes:{kind}@{at}"


# ------------------------------------------------------------------------------------------------- native files


_ODD_VALUES = (None, True, -1, 0, 1.5, float("inf"), "x", [], {}, [0], [1, 2, 3], 2**63, 10**30, "\x1b[2J")


def mutate_header(base: Base, rng: random.Random) -> tuple[bytes, str]:
    """A JSON-level edit of a native file's safetensors header."""
    header, body = split_native(base.data)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(("offsets", "shape", "dtype", "drop", "duplicate", "rename", "nest", "length", "body", "type"))
    if kind == "offsets":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice((
            5, "abc", [], [end, begin], [begin], [begin, end, 0], [begin, end + 4], [begin - 4, end], [0, end],
            [begin, 2**64], [-1, end], [begin, float(end)], [str(begin), end], None,
        ))
    elif kind == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice((
            [], [0], [-1], shape + [1], shape[:-1], [math.prod(shape)], [2**31] * 2, [2**62, 2**62],
            list(reversed(shape)), [True] * len(shape), ["1"], [1.0] * len(shape), [1] * 9,
        ))
    elif kind == "dtype":
        entry["dtype"] = rng.choice(("F16", "BF16", "F64", "I8", "U8", "BOOL", "I64", "F8_E4M3", "C64", "X", 3, None))
    elif kind == "drop":
        del header[name]
    elif kind == "duplicate":
        text = json.dumps(header)
        piece = json.dumps({name: entry})[1:-1]
        return join_native("{" + piece + "," + text[1:], body), f"header:{kind}:{name}"
    elif kind == "rename":
        header[rng.choice(("", "x" * 1000, "conv1a.weight", "head.weight", "\x1b]0;t\x07", "\ud800"))] = (
            header.pop(name))
    elif kind == "nest":
        depth = rng.choice((4, 50, 1000, 200_000))
        text = json.dumps(header)
        return join_native(text[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}", body), f"header:nest{depth}"
    elif kind == "length":
        return join_native(header, body, rng), "header:length"
    elif kind == "body":
        body = rng.choice((body[:-4], body + bytes(4), b"", body * 2))
    else:
        header[name] = rng.choice(_ODD_VALUES)
    return join_native(header, body), f"header:{kind}:{name}"


_CONFIG_EDITS = {
    "fc_dim": (2_000_000, 0, -4, 5, 4.0, "4", None, 2**40),
    "num_classes": (1_000_000_000, 0, 2, 4, True, 3.5, 2**70),
    "width_mult": (10000.0, 1000.0, 0.0, -1.0, float("nan"), float("inf"), "x", 1 / 32, 100),
    "temporal_depths": ([3] * 4, [2] * 5, [1] * 5, [255] * 5, [-1] * 5, "33333", [3] * 6, [10**9] * 5),
    "clip_len": (0, 1, 16, 10**9, -1, "8"),
    "crop_size": (15, 16, 48, 112, 10**9, 2**31 - 1),
    "pool5": ("caffe", "max", None, 1),
    "dropout": (1.0, -0.1, "0.5", float("nan")),
    "in_channels": (1, 4, 0, 10**6),
    "layers": (3,),
}
_PREPROCESS_EDITS = {
    "mean": ("abc", [1, 2], [float("nan")] * 3, [1e308] * 3, [[1], [2], [3]]),
    "std": ([0, 1, 1], [-1] * 3, "xyz"),
    "channel_order": ("BRG", 3, None),
    "short_side": (0, 10**12, "128"),
    "resize_hw": ([128], [0, 0], [10**9, 10**9], "128x171"),
    "crop_size": (0, 10**9),
    "clip_len": (0, 2**40),
    "frame_interval": (-1, 0.5),
}


def mutate_metadata(base: Base, rng: random.Random) -> tuple[bytes, str]:
    """An edit of a native file's c3dnet metadata: config, preprocessing, class names, extra or format."""
    header, body = split_native(base.data)
    meta = header["__metadata__"]
    kind = rng.choice(("config", "config", "config", "preprocess", "class_names", "extra", "raw", "drop"))
    if kind == "config":
        config = json.loads(meta["config"])
        for _ in range(rng.choice((1, 1, 2))):
            key = rng.choice(list(_CONFIG_EDITS))
            config[key] = rng.choice(_CONFIG_EDITS[key])
        meta["config"] = json.dumps(config)
        how = f"metadata:config:{json.dumps(config)[:120]}"
    elif kind == "preprocess":
        preprocess = json.loads(meta["preprocess"])
        key = rng.choice(list(_PREPROCESS_EDITS))
        preprocess[key] = rng.choice(_PREPROCESS_EDITS[key])
        meta["preprocess"] = json.dumps(preprocess)
        how = f"metadata:preprocess:{key}"
    elif kind == "class_names":
        meta["class_names"] = json.dumps(rng.choice((
            ["a", "b"], ["a"] * 4, ["\x1b[31mred", "\x1b]0;title\x07", "\u202eevil"], [1, 2, 3], "abc",
            [["a"], ["b"], ["c"]], ["x"] * 200_000, None, ["a", "b", "\ud800"],
        )))
        how = "metadata:class_names"
    elif kind == "extra":
        depth = rng.choice((3, 40, 5000))
        meta["extra"] = "[" * depth + "]" * depth if rng.random() < 0.5 else json.dumps({"k": list(range(150_000))})
        how = f"metadata:extra:{depth}"
    elif kind == "raw":
        key = rng.choice(("config", "preprocess", "class_names", "extra", "format", "source_format"))
        meta[key] = rng.choice(("{", "", "null", "[]", "1e999", '{"a":1,"a":2}', "x" * 100, "\x00"))
        how = f"metadata:raw:{key}"
    else:
        key = rng.choice(("config", "preprocess", "class_names", "format"))
        meta.pop(key, None)
        how = f"metadata:drop:{key}"
    return join_native(header, body), how


# ------------------------------------------------------------------------------------------------------ pickles


def mutate_opcodes(data: bytes, rng: random.Random, start: int = 0) -> tuple[bytes, str]:
    """Change one opcode of the pickle at `start`: its argument, length prefix or global; drop, repeat or
    insert opcodes."""
    ops = []
    stream = io.BytesIO(data[start:])
    for op, arg, pos in pickletools.genops(stream):
        ops.append((op, arg, start + pos))
        if op.name == "STOP":
            break
    op, arg, pos = rng.choice(ops)
    data = bytearray(data)
    kind = rng.choice(("argument", "argument", "drop", "repeat", "insert", "global"))
    if kind == "argument" and op.arg is not None and op.arg.n > 0 and op.name not in ("FRAME",):
        width = op.arg.n
        value = rng.choice(EXTREMES) % (1 << (8 * width))
        data[pos + 1: pos + 1 + width] = value.to_bytes(width, "little")
    elif kind == "drop":
        end = ops[ops.index((op, arg, pos)) + 1][2] if (op, arg, pos) != ops[-1] else pos + 1
        del data[pos:end]
    elif kind == "repeat":
        end = ops[ops.index((op, arg, pos)) + 1][2] if (op, arg, pos) != ops[-1] else pos + 1
        data[pos:pos] = data[pos:end] * rng.choice((1, 2, 50))
    elif kind == "insert":
        data[pos:pos] = rng.choice((b"(", b"0", b"2", b"N", b"]", b"}", b")", b"\x85", b"R", b"b", b"s", b"a", b"e",
                                    b"t", b"h\x00", b"h\xff", b"q\x05", b"Q", b"\x94", b"\x8c\x00", b"c__main__\nx\n"))
    else:
        data[pos:pos] = rng.choice((b"cos\nsystem\n", b"cnumpy\nndarray\n", b"cbuiltins\neval\n",
                                    b"cnumpy.core.multiarray\n_reconstruct\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
                                    b"ccollections\nOrderedDict\n", b"cnumpy\ndtype\n", b"c_codecs\nencode\n"))
    return bytes(data), f"opcodes:{kind}:{op.name}@{pos}"


def mutate_objects(base: Base, rng: random.Random) -> tuple[bytes, str]:
    """Re-save the base's state with one to three values replaced or added (keys renamed or odd too)."""
    torch_file = base.kind.startswith("torch")
    state = base.state
    container = state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state
    new = OrderedDict(container)
    hows = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        key = rng.choice(list(new))
        action = rng.choice(("replace", "replace", "replace", "add", "drop", "rename"))
        if action == "replace" or action == "add":
            value, what = hostile_value(rng, new[key] if not isinstance(new[key], dict) else np.zeros(3), torch_file)
            new[key if action == "replace" else f"extra{len(new)}"] = value
            hows.append(f"{action}:{key}:{what}")
        elif action == "drop":
            del new[key]
            hows.append(f"drop:{key}")
        else:
            new[rng.choice(("layer1.weight", "\x1b[2J", 3, ("a", 1), "module." + str(key), ""))] = new.pop(key)
            hows.append(f"rename:{key}")
    if isinstance(state, dict) and "state_dict" in state:
        outer = dict(state, state_dict=new)
        if rng.random() < 0.3:
            outer["meta"] = dict(outer["meta"], history=nest_pairs(40), nested=deep(30))
        new = outer
    how = "objects:" + ",".join(hows)
    try:
        if base.kind == "pickle":
            return pickle.dumps(new, protocol=rng.choice((0, 1, 2, 4, 5, base.protocol))), how
        with fake_mmengine() if base.name == "mmengine" else nullcontext():
            return torch_bytes(new, zip_format=base.kind == "torch-zip"), how
    except (pickle.PicklingError, TypeError, ValueError, RuntimeError, RecursionError, AttributeError) as e:
        return base.data, f"{how} (not picklable: {type(e).__name__}; base file)"


# ---------------------------------------------------------------------------------------------------- torch zip


def _rewrite_zip(records: list[tuple[str, bytes]], path: Path) -> None:
    writer = torch._C.PyTorchFileWriter(str(path))
    for name, data in records:
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()


def mutate_zip(base: Base, rng: random.Random, path: Path) -> str:
    """Mutate a torch zip's records and re-pack them with valid CRCs (so torch reaches the contents)."""
    with zipfile.ZipFile(io.BytesIO(base.data)) as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]
        records = [(info.filename.split("/", 1)[1], archive.read(info)) for info in archive.infolist()
                   if not info.filename.endswith("serialization_id")]
    kind = rng.choice(("data.pkl", "data.pkl", "data.pkl", "truncate-storage", "grow-storage", "drop", "deflate",
                       "version"))
    names = [name for name, _ in records]
    if kind == "data.pkl":
        i = names.index("data.pkl")
        pkl, how = mutate_opcodes(records[i][1], rng)
        records[i] = ("data.pkl", pkl)
    elif kind in ("truncate-storage", "grow-storage"):
        i = rng.choice([j for j, n in enumerate(names) if n.startswith("data/")])
        data = records[i][1]
        records[i] = (names[i], data[: rng.randrange(len(data))] if kind == "truncate-storage" else data + bytes(64))
        how = names[i]
    elif kind == "drop":
        del records[rng.randrange(len(records))]
        how = "record"
    elif kind == "version":
        i = names.index("version") if "version" in names else 0
        records[i] = (names[i], rng.choice((b"99\n", b"", b"-1\n", b"3\n", b"\xff")))
        how = names[i]
    else:
        with zipfile.ZipFile(path, "w") as out:
            for name, data in records:
                method = zipfile.ZIP_DEFLATED if name.startswith("data/") or rng.random() < 0.3 else zipfile.ZIP_STORED
                out.writestr(f"{prefix}/{name}", data, compress_type=method)
        return "zip:deflate"
    try:
        _rewrite_zip(records, path)
    except RuntimeError as e:
        path.write_bytes(base.data)
        return f"zip:{kind} (not written: {e}; base file)"
    return f"zip:{kind}:{how}"


# ----------------------------------------------------------------------------------------------------- protobuf


def mutate_protobuf(base: Base, rng: random.Random) -> tuple[bytes, str]:
    """A field-level edit of the mean file's BlobProto (C3D layout: five varint dims, then field 6 packed)."""
    values = base.state
    dims = list(values.shape)
    payload = values.astype("<f4").tobytes()
    kind = rng.choice(("dim", "dim", "wire", "repeat", "unknown", "length", "unpacked"))
    fields = [bytes([(i + 1) << 3]) + varint(d) for i, d in enumerate(dims)]
    length = len(payload)
    if kind == "dim":
        i = rng.randrange(5)
        fields[i] = bytes([(i + 1) << 3]) + varint(rng.choice(EXTREMES))
    elif kind == "wire":
        i = rng.randrange(5)
        fields[i] = bytes([(i + 1) << 3 | rng.choice((1, 2, 3, 4, 5, 6, 7))]) + fields[i][1:]
    elif kind == "repeat":
        fields.insert(rng.randrange(6), rng.choice(fields))
    elif kind == "unknown":
        fields.insert(rng.randrange(6), varint(rng.choice((8, 9, 12, 100, 2**29)) << 3 | rng.choice((0, 2, 5)))
                      + varint(rng.choice((0, 1, 4, 2**31))))
    elif kind == "length":
        length = rng.choice(EXTREMES)
    else:  # data as unpacked fixed32 values, some of them dropped
        floats = [payload[i:i + 4] for i in range(0, len(payload), 4)]
        start = rng.randrange(len(floats))
        del floats[start:start + rng.choice((0, 1, 5))]
        return b"".join(fields) + b"".join(b"\x35" + f for f in floats), f"protobuf:{kind}"
    return b"".join(fields) + bytes([6 << 3 | 2]) + varint(length) + payload, f"protobuf:{kind}"


# ---------------------------------------------------------------------------------------------------- dispatch


def mutate(base: Base, rng: random.Random, path: Path) -> str:
    """Write one mutant of `base` to `path`; returns how it was made (for reproducing failures)."""
    if base.kind == "safetensors":
        kind = rng.choices(("bytes", "header", "metadata"), (3, 3, 4))[0]
        data, how = (mutate_bytes(base, base.data, rng) if kind == "bytes" else
                     mutate_header(base, rng) if kind == "header" else mutate_metadata(base, rng))
    elif base.kind == "pickle":
        kind = rng.choices(("bytes", "opcodes", "objects"), (3, 3, 4))[0]
        data, how = (mutate_bytes(base, base.data, rng) if kind == "bytes" else
                     mutate_opcodes(base.data, rng) if kind == "opcodes" else mutate_objects(base, rng))
    elif base.kind == "protobuf":
        kind = rng.choices(("bytes", "protobuf"), (5, 5))[0]
        data, how = mutate_bytes(base, base.data, rng) if kind == "bytes" else mutate_protobuf(base, rng)
    elif base.kind == "torch-zip":
        kind = rng.choices(("bytes", "zip", "objects"), (3, 4, 3))[0]
        if kind == "zip":
            return mutate_zip(base, rng, path)
        data, how = mutate_bytes(base, base.data, rng) if kind == "bytes" else mutate_objects(base, rng)
    else:
        kind = rng.choices(("bytes", "opcodes", "objects"), (4, 3, 3))[0]
        if kind == "opcodes":  # in any of the legacy format's five pickles, most often the state's
            start = base.pickles[3] if rng.random() < 0.6 else rng.choice(base.pickles)
            data, how = mutate_opcodes(base.data, rng, start)
        else:
            data, how = mutate_bytes(base, base.data, rng) if kind == "bytes" else mutate_objects(base, rng)
    path.write_bytes(data)
    return how


__all__ = ["Base", "make_bases", "mutate", "mutate_bytes", "mutate_header", "mutate_metadata", "mutate_objects",
           "mutate_opcodes", "mutate_protobuf", "mutate_zip"]


