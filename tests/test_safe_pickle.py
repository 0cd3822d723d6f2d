"""The restricted unpickler: numpy arrays come back intact, and no payload ever runs."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import time
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from c3dnet.errors import WeightsError
from c3dnet.safe_pickle import MAX_DEPTH, MAX_REFERENCES, load_safe_pickle, loads_safe_pickle


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious weight file does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_and_containers_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(0)
    state = OrderedDict(
        w=rng.normal(size=(3, 4)).astype(np.float32),
        fortran=np.asfortranarray(rng.normal(size=(2, 5))),
        ints=np.arange(7, dtype=np.int64),
        half=rng.normal(size=(4,)).astype(np.float16),
        empty=np.zeros((0, 3), np.float32),  # protocol 2 writes its data as builtins.bytes()
        scalar=np.float32(2.5),
        nested={"names": ["a", "b"], "bytes": b"\x00\xff", "n": 3, "x": 1.5, "t": (1, None, True)},
    )
    out = loads_safe_pickle(pickle.dumps(state, protocol=protocol))
    assert isinstance(out, OrderedDict) and list(out) == list(state)
    for key in ("w", "fortran", "ints", "half", "empty"):
        assert out[key].dtype == state[key].dtype
        np.testing.assert_array_equal(out[key], state[key])
    assert out["scalar"] == np.float32(2.5)
    assert out["nested"] == state["nested"]


def test_python2_pickle_of_numpy_arrays() -> None:
    # Old Caffe conversions were pickled by Python 2: strings, and the arrays' raw data, as SHORT_BINSTRING.
    values = np.array([1.5, -2.0, 3.25], np.float32)

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = (
        b"\x80\x02}q\x00" + string(b"fc8.bias")
        + b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + string(b"b")
        + b"\x87Rq\x03(K\x01K\x03\x85cnumpy\ndtype\nq\x04" + string(b"f4") + b"K\x00K\x01\x87Rq\x05(K\x03"
        + string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(values.tobytes())
        + b"tbs."
    )
    out = loads_safe_pickle(raw)
    assert list(out) == ["fc8.bias"] and out["fc8.bias"].dtype == np.float32
    np.testing.assert_array_equal(out["fc8.bias"], values)


def _payloads(marker: Path) -> list[object]:
    cmd = f"touch {marker}"
    return [
        _Payload(os.system, cmd),
        _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        _Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
        _Payload(builtins.open, str(marker), "w"),
        _Payload(subprocess.call, ["touch", str(marker)]),
        # The payload hidden inside an otherwise ordinary state dict, next to real arrays.
        {"backbone.fc6.weight": np.ones((2, 3), np.float32), "evil": _Payload(os.system, cmd)},
    ]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, index: int, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[index]
    path = tmp_path / "model.pdparams"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(WeightsError) as err:
        load_safe_pickle(path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert "untrusted" in str(err.value)


def test_handwritten_opcodes_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # GLOBAL builtins.eval + REDUCE written by hand (protocol 0), as an attacker would.
    raw = b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR."
    with pytest.raises(WeightsError, match="builtins.eval"):
        loads_safe_pickle(raw, "evil.pickle")
    # A dotted name reaching through an allowed global to its module's globals (protocol 4 STACK_GLOBAL).
    module, name = b"numpy._core.multiarray", b"_reconstruct.__globals__"
    dotted = b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name + b"\x93."
    with pytest.raises(WeightsError, match="__globals__"):
        loads_safe_pickle(dotted, "evil.pickle")
    # An INST opcode (protocol 0 class instantiation) of a forbidden class.
    inst = b"(ios\nsystem\n(S'touch " + str(marker).encode() + b"'\nt."
    with pytest.raises(WeightsError, match="os.system"):
        loads_safe_pickle(inst, "evil.pickle")
    assert not marker.exists()


def test_tuple_accepts_only_ready_sequences() -> None:
    assert loads_safe_pickle(pickle.dumps(_Payload(tuple, [1, 2]), protocol=4)) == (1, 2)
    with pytest.raises(WeightsError, match="builtins.tuple of a str"):
        loads_safe_pickle(pickle.dumps(_Payload(tuple, "ab"), protocol=4), "t.pickle")


def test_persistent_ids_and_object_arrays_are_refused() -> None:
    with pytest.raises(WeightsError, match="persistent id"):
        loads_safe_pickle(b"\x80\x02X\x03\x00\x00\x00abcQ.", "p.pickle")  # BINPERSID
    objects = np.array([1, "a", None], dtype=object)
    with pytest.raises(WeightsError, match="refused|not a readable"):
        loads_safe_pickle(pickle.dumps({"w": objects}, protocol=2), "o.pickle")


def test_truncated_and_garbage_pickles_name_the_file(tmp_path: Path) -> None:
    data = pickle.dumps({"w": np.ones((8, 8), np.float32)}, protocol=4)
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.pdparams"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="truncated or corrupt") as err:
            load_safe_pickle(path)
        assert str(path) in str(err.value)
    with pytest.raises(WeightsError, match="cannot read"):
        load_safe_pickle(tmp_path / "missing.pdparams")


# ------------------------------------------------------------------------------------------------ resource bounds


def _nested_pairs(levels: int) -> list:
    x: list = []
    for _ in range(levels):
        x = [x, x]  # two references to the same list: 2**levels paths, `levels` objects
    return x


def test_shared_references_are_checked_in_linear_time() -> None:
    data = pickle.dumps({"w": np.ones(3, np.float32), "nest": _nested_pairs(45)}, protocol=2)
    assert len(data) < 600  # the 524-byte .pdparams: 2**45 paths
    start = time.perf_counter()
    out = loads_safe_pickle(data)
    assert time.perf_counter() - start < 1.0
    node, depth = out["nest"], 0
    while node:
        assert node[0] is node[1]  # sharing survives the check
        node, depth = node[0], depth + 1
    assert depth == 45


def test_depth_width_and_cycles_are_bounded() -> None:
    with pytest.raises(WeightsError, match=f"nested more than {MAX_DEPTH} levels"):
        loads_safe_pickle(pickle.dumps(_nested_pairs(MAX_DEPTH + 1), protocol=4), "deep.pdparams")
    deep = b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b"."  # 200,000 nested lists by hand
    with pytest.raises(WeightsError, match="deep.pickle: refused.*nested"):
        loads_safe_pickle(deep, "deep.pickle")
    wide = pickle.dumps([None] * (MAX_REFERENCES + 1), protocol=4)
    with pytest.raises(WeightsError, match="more than 2,000,000 references"):
        loads_safe_pickle(wide, "wide.pickle")
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(WeightsError, match="contains itself"):
        loads_safe_pickle(pickle.dumps({"w": loop}, protocol=4), "loop.pickle")


def test_arrays_get_their_memory_only_from_the_file() -> None:
    from numpy._core import multiarray

    direct = pickle.dumps({"w": _Payload(np.ndarray, (1000,), np.dtype("f4"))}, protocol=2)
    with pytest.raises(WeightsError, match=r"refused.*numpy.ndarray\(...\) called directly"):
        loads_safe_pickle(direct, "direct.pdparams")
    no_state = pickle.dumps({"w": _Payload(multiarray._reconstruct, np.ndarray, (0,), b"b")}, protocol=2)
    with pytest.raises(WeightsError, match="never received its data"):
        loads_safe_pickle(no_state, "nostate.pdparams")
    big = pickle.dumps({"w": _Payload(multiarray._reconstruct, np.ndarray, (10**6,), b"b")}, protocol=2)
    with pytest.raises(WeightsError, match=r"_reconstruct of shape \(1000000,\)"):
        loads_safe_pickle(big, "big.pdparams")


class _ArrayWithState:
    """Pickles as numpy does, with a state of our choosing: _reconstruct(ndarray, (0,), b'b') + BUILD state."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        from numpy._core import multiarray

        return multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ((1, (4, 4), np.dtype("f4"), False, bytes(60)), r"\(4, 4\) and dtype float32 \(64 bytes\) with 60 bytes"),
        ((1, (2,), np.dtype("f4"), False, bytes(9)), r"\(8 bytes\) with 9 bytes"),
        ((1, (10**12, 10**12), np.dtype("f8"), False, b""), "with 0 bytes"),
        ((1, (2, -1), np.dtype("f4"), False, bytes(8)), "non-negative integers"),
        ((1, (2,), np.dtype([("a", "f4")]), False, bytes(8)), "refused.*dtype"),
        ((1, (2,), np.dtype("f4"), False, [1.0, 2.0]), "array data of type list"),
        ((7, (2,), np.dtype("f4"), False, bytes(8)), "array state version 7"),
        (("junk",), "not \\(version, shape, dtype, fortran, data\\)"),
    ],
)
def test_array_states_must_match_their_data(state: tuple, message: str) -> None:
    data = pickle.dumps({"w": _ArrayWithState(state)}, protocol=2)
    with pytest.raises(WeightsError, match=message) as err:
        loads_safe_pickle(data, "state.pdparams")
    assert str(err.value).startswith("state.pdparams: ") and "\n" not in str(err.value)


def test_arrays_are_read_only_views_of_the_file_bytes() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = loads_safe_pickle(pickle.dumps({"w": values, "f": np.asfortranarray(values)}, protocol=4))
    np.testing.assert_array_equal(out["w"], values)
    np.testing.assert_array_equal(out["f"], values)
    assert not out["w"].flags.writeable  # no second copy was made
    assert out["f"].flags.f_contiguous


def test_a_pickled_dtype_cannot_change_numpys_own() -> None:
    # dtype('f4', align=False, copy=False) is numpy's shared float32; BUILD would then make it big-endian.
    raw = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x89\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xff"
           b"J\xff\xff\xff\xffK\x00tb.")
    out = loads_safe_pickle(raw, "dtype.pickle")
    assert out.byteorder == ">" and np.dtype("f4").byteorder == "="
    assert np.frombuffer(np.float32(1.0).tobytes(), "f4")[0] == 1.0


def test_lengths_beyond_the_file_are_refused_fast(tmp_path: Path) -> None:
    # BINBYTES8 of 2**40 bytes, and a FRAME of 2**50: the reader never asks for more than the file holds.
    for name, raw in (("bytes", b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc."),
                      ("frame", b"\x80\x04\x95" + (1 << 50).to_bytes(8, "little") + b"N.")):
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(raw)
        start = time.perf_counter()
        with pytest.raises(WeightsError, match=f"{name}.pdparams: not a readable weights pickle"):
            load_safe_pickle(path)
        assert time.perf_counter() - start < 1.0


def test_memo_indices_cannot_allocate() -> None:
    # LONG_BINPUT 2**27: the C unpickler would grow its memo array to 2**28 entries (2 GB, zeroed) for 10 bytes.
    raw = b"\x80\x02Nr" + (1 << 27).to_bytes(4, "little") + b"j" + (1 << 27).to_bytes(4, "little") + b"\x86."
    tracemalloc.start()
    try:
        assert loads_safe_pickle(raw, "memo.pickle") == (None, None)
        assert tracemalloc.get_traced_memory()[1] < 10 * 2**20
    finally:
        tracemalloc.stop()
    with pytest.raises(WeightsError, match="memo.pickle: not a readable.*Memo value not found"):
        loads_safe_pickle(b"\x80\x02j" + (1 << 27).to_bytes(4, "little") + b".", "memo.pickle")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (b"(K\x03X\x01\x00\x00\x00<(K\x02tNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", "sub-array dtype"),
        (b"(K\x03X\x01\x00\x00\x00<N(X\x01\x00\x00\x00atNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", "structured"),
        (b"(K\x03X\x01\x00\x00\x00!NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", "byte order '!'"),
        (b"(K\x03X\x01\x00\x00\x00<NNNK\x08J\xff\xff\xff\xffK\x00t", "item size 8"),
        (b"(K\x03X\x01\x00\x00\x00<NNNt", "not numpy's"),
        (b"}", "not numpy's"),
    ],
)
def test_dtype_states_are_read_not_trusted(state: bytes, message: str) -> None:
    # numpy's own dtype.__setstate__ fails with a SystemError on some of these; here each is a clear refusal.
    raw = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R" + state + b"b."
    with pytest.raises(WeightsError, match=message):
        loads_safe_pickle(raw, "dtype.pickle")
