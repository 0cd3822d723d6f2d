"""mmengine / mmaction2 checkpoints load safely: metadata objects become placeholders that are never called, only
the tensors under `state_dict` are read, what was dropped is reported, and every other global is still refused.

The fixtures are real `torch.save` zips holding instances of local classes registered under mmengine's own module
and class names (mmengine itself is not installed), shaped as mmengine 0.x/1.x write them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.errors import WeightsError
from c3dnet.safe_pickle import INERT_GLOBALS
from c3dnet.weights import load_model, read_weights
from tests.test_weights import FOREIGN, _model, mmaction2_state

MARKER = "C3DNET_TEST_MARKER"


def _touch() -> None:
    """What every fake mmengine method does: leave a file behind, so a test can tell it was called."""
    marker = os.environ.get(MARKER)
    if marker:
        Path(marker).write_text("called")


class HistoryBuffer:
    def __init__(self, log_history=(), count_history=(), max_length=1_000_000) -> None:
        self.max_length = max_length
        self._log_history = np.array(log_history, dtype=np.float64)
        self._count_history = np.array(count_history, dtype=np.float64)

    def __setstate__(self, state) -> None:
        _touch()
        self.__dict__.update(state)


class MessageHub:
    def __init__(self, name: str, log_scalars=None) -> None:
        self.instance_name = name
        self._log_scalars = log_scalars or collections.OrderedDict()
        self._runtime_info = collections.OrderedDict(epoch=45, iter=1234)

    def __setstate__(self, state) -> None:
        _touch()
        self.__dict__.update(state)


class ConfigDict(dict):
    def __setitem__(self, key, value) -> None:
        _touch()
        super().__setitem__(key, value)

    def __setstate__(self, state) -> None:
        _touch()


class Config:
    def __init__(self, cfg_dict: ConfigDict, filename: str, text: str) -> None:
        self._cfg_dict, self._filename, self._text = cfg_dict, filename, text

    def __getstate__(self):
        return (self._cfg_dict, self._filename, self._text, {})

    def __setstate__(self, state) -> None:
        _touch()


class Evil:
    """A class under an mmengine name that is not on the inert list."""


FAKES = {
    "mmengine.logging.history_buffer": [HistoryBuffer],
    "mmengine.logging.message_hub": [MessageHub],
    "mmengine.config.config": [ConfigDict, Config],
    "mmengine.runner.checkpoint": [Evil],
}


@contextlib.contextmanager
def fake_mmengine() -> Iterator[None]:
    """Register the fake classes under mmengine's module names (for torch.save, and as traps while loading)."""
    added = []
    for module_name, classes in FAKES.items():
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls in classes:
            cls.__module__ = module_name
            setattr(sys.modules[module_name], cls.__name__, cls)
    try:
        yield
    finally:
        for name in reversed(added):
            del sys.modules[name]


def mmengine_checkpoint(model: torch.nn.Module, extra: dict | None = None) -> dict:
    """What mmengine's runner saves: meta with a Config and numpy values, message_hub state with HistoryBuffers,
    optimizer state (tensors of their own), param_schedulers with a Counter of milestones."""
    state = mmaction2_state(model, recognizer=True)
    cfg = ConfigDict(model=ConfigDict(type="Recognizer3D", backbone=ConfigDict(type="C3D")), work_dir="work_dirs")
    hub = MessageHub("mmaction", collections.OrderedDict(
        (key, HistoryBuffer([0.5, 0.25], [1, 1])) for key in ("train/loss", "train/lr", "val/acc/top1")))
    return {
        "meta": {"epoch": 45, "iter": np.int64(4500), "seed": np.int32(0), "dtype": np.dtype("float64"),
                 "time": "20220811_000000", "mmengine_version": "0.8.4", "cfg": cfg,
                 "config": Config(cfg, "c3d_ucf101.py", "model = dict(type='Recognizer3D')"),
                 "dataset_meta": {"classes": ("walk", "run")}, "lr": np.float64(0.001)},
        "state_dict": state,
        "message_hub": {"log_scalars": hub._log_scalars, "runtime_info": hub._runtime_info,
                        "resumed_keys": collections.OrderedDict(epoch=True), "hub": hub},
        "optimizer": {"state": {i: {"momentum_buffer": torch.full_like(v, 7.0)} for i, v in enumerate(state.values())},
                      "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": list(range(len(state)))}]},
        "param_schedulers": [{"milestones": collections.Counter({20: 1, 40: 1}), "gamma": 0.1, "last_epoch": 45}],
        **(extra or {}),
    }


def save_checkpoint(obj: dict, path: Path) -> Path:
    with fake_mmengine():
        torch.save(obj, path)
    return path


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "called"
    monkeypatch.setenv(MARKER, str(path))
    return path


def test_an_mmengine_checkpoint_loads_and_reports_what_it_dropped(tmp_path: Path, marker: Path) -> None:
    model = _model(**FOREIGN)
    path = save_checkpoint(mmengine_checkpoint(model), tmp_path / "c3d_ucf101.pth")
    assert not marker.exists()  # saving ran none of the fake methods
    with fake_mmengine():  # the classes are importable under their real names: they must still not be called
        weights = read_weights(path)
        loaded = load_model(path)
    assert not marker.exists()
    assert weights.source_format == "mmaction2" and weights.unexpected == ()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    dropped = {entry.split(" ", 1)[0]: entry for entry in weights.dropped}
    assert set(dropped) == {"meta", "message_hub", "optimizer", "param_schedulers"}
    assert "Config x1" in dropped["meta"] and "ConfigDict x3" in dropped["meta"]
    assert "HistoryBuffer x3" in dropped["message_hub"] and "MessageHub x1" in dropped["message_hub"]
    assert f"{len(model.state_dict())} tensors not read" in dropped["optimizer"]
    assert "Counter x1" in dropped["param_schedulers"]
    assert all("placeholder, never called" in entry for name, entry in dropped.items() if name != "optimizer")
    from c3dnet.commands.info import describe

    assert describe(str(path))["dropped"] == list(weights.dropped)  # `c3d info` reports them too


def test_only_the_state_dict_storages_are_read(tmp_path: Path) -> None:
    # The optimizer's storages are damaged (their CRC fails): the load still succeeds, since they are never read.
    model = _model(**FOREIGN)
    path = save_checkpoint(mmengine_checkpoint(model), tmp_path / "m.pth")
    source = zipfile.ZipFile(path)
    pickled = source.read(next(n for n in source.namelist() if n.endswith("data.pkl")))
    n_weights = len(model.state_dict())
    data = bytearray(path.read_bytes())
    for info in source.infolist():
        key = info.filename.rsplit("/", 1)[-1]
        if "/data/" in info.filename and int(key) >= n_weights and info.file_size:
            data[_data_offset(data, info)] ^= 0xFF
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    assert b"momentum_buffer" in pickled
    torch.testing.assert_close(load_model(damaged).fc6.weight, model.fc6.weight, rtol=0, atol=0)
    # ... while a damaged weight storage is found.
    data = bytearray(path.read_bytes())
    info = next(i for i in source.infolist() if i.filename.endswith("/data/0"))
    data[_data_offset(data, info)] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"damaged.pth: corrupt torch checkpoint \(storage '0' fails its CRC-32"):
        load_model(damaged)


def _data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes start: after its local header, whose extra field (torch's alignment padding) is
    not the central directory's."""
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def test_other_globals_are_still_refused(tmp_path: Path, marker: Path) -> None:
    model = _model(**FOREIGN)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for name, extra, pattern in (
        ("payload", {"meta": {"hook": Payload()}}, "the global `(posix|os).system`"),
        ("in-placeholder", {"message_hub": {"buffer": _buffer_holding(Payload())}}, "the global `(posix|os).system`"),
        ("unlisted", {"meta": {"runner": Evil()}}, "the global `mmengine.runner.checkpoint.Evil`"),
        ("eval", {"meta": {"x": _Reduce(eval, ("1+1",))}}, "the global `(__builtin__|builtins).eval`"),
    ):
        path = save_checkpoint(mmengine_checkpoint(model, extra), tmp_path / f"{name}.pth")
        with pytest.raises(WeightsError, match=f"{name}.pth: refused to load: the checkpoint asks for {pattern}"):
            load_model(path)
    assert not marker.exists()


def _buffer_holding(value: object) -> HistoryBuffer:
    buffer = HistoryBuffer()
    buffer.payload = value
    return buffer


class _Reduce:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_placeholders_are_bounded_like_everything_else(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    cyclic = HistoryBuffer()
    cyclic.self = cyclic
    path = save_checkpoint(mmengine_checkpoint(model, {"message_hub": {"b": cyclic}}), tmp_path / "cycle.pth")
    with pytest.raises(WeightsError, match="cycle.pth: refused to load: the checkpoint holds a container that "
                                           "contains itself"):
        load_model(path)
    deep: object = HistoryBuffer()
    for _ in range(100):
        deep = _buffer_holding(deep)
    path = save_checkpoint(mmengine_checkpoint(model, {"meta": {"deep": deep}}), tmp_path / "deep.pth")
    with pytest.raises(WeightsError, match="deep.pth: refused to load: .*nested more than 64 levels"):
        load_model(path)


def test_the_inert_list_names_real_mmengine_classes() -> None:
    for name in ("mmengine.logging.history_buffer.HistoryBuffer", "mmengine.logging.message_hub.MessageHub",
                 "mmengine.config.config.ConfigDict", "mmengine.config.config.Config", "collections.Counter"):
        assert name in INERT_GLOBALS
    assert not any(name.startswith(("os.", "posix.", "builtins.", "subprocess.")) for name in INERT_GLOBALS)


def test_tensor_views_in_a_zip_are_read_as_torch_does_and_checked(tmp_path: Path) -> None:
    from c3dnet.weights.files import read_raw
    from tests.weights_mutators import _rewrite_zip

    base = torch.arange(12.0)
    views = {"conv1a.weight": base[2:8].view(2, 3), "t": base.view(3, 4).t(), "s": base[1::3], "x": base}
    path = tmp_path / "views.pth"
    torch.save(views, path)
    tensors = read_raw(path).tensors
    for key, view in views.items():
        torch.testing.assert_close(tensors[key], view, rtol=0, atol=0)
    # The same file with the first view moved past the end of its storage (offset 2 -> 10, 6 elements of 12).
    torch.save({"conv1a.weight": base[2:8]}, path)
    with zipfile.ZipFile(path) as archive:
        records = [(i.filename.split("/", 1)[1], archive.read(i)) for i in archive.infolist()
                   if not i.filename.endswith("serialization_id")]
    # Saved on a GPU: the storage's location is ignored, everything is read to the CPU.
    gpu = tmp_path / "gpu.pth"
    _rewrite_zip([(n, d.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")) for n, d in records], gpu)
    assert b"cuda:0" in zipfile.ZipFile(gpu).read(next(n for n in zipfile.ZipFile(gpu).namelist()
                                                        if n.endswith("data.pkl")))
    torch.testing.assert_close(read_raw(gpu).tensors["conv1a.weight"], base[2:8], rtol=0, atol=0)
    pkl = dict(records)["data.pkl"]
    assert pkl.count(b"QK\x02K\x06") == 1  # BINPERSID, then the storage offset 2 and the size 6
    records = [(n, pkl.replace(b"QK\x02K\x06", b"QK\x0aK\x06") if n == "data.pkl" else d) for n, d in records]
    moved = tmp_path / "moved.pth"
    _rewrite_zip(records, moved)
    with pytest.raises(WeightsError, match=r"moved.pth: refused to load: the checkpoint holds a tensor of size "
                                           r"\(6,\) at offset 10 beyond its storage of 12 elements"):
        read_raw(moved)
