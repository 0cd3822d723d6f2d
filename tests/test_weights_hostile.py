"""Hostile and odd weight files: every one is refused fast, with one line naming the file, before it can
allocate more than its own size; state files, ONNX files and devices are told apart from weights.

The resource rule (peak RSS above the RSS after import <= 2N + 64 MB for a file of N bytes) is checked for these
files by the fork server in `tests/weights_fuzz.py`, and once at full size (78M parameters) at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main as cli_main
from c3dnet.errors import OnnxFileError, TrainingStateError, WeightsError
from c3dnet.model import C3D, C3DConfig
from c3dnet.weights import load_model, model_from_weights, read_weights, save_model, save_native
from c3dnet.weights.layouts import MAX_UNBACKED_PARAMETERS, expected_shapes
from c3dnet.weights.native import MAX_HEADER
from tests.conftest import tiny_config
from tests.test_weights import mmaction2_state, paddle_state

ROOT = Path(__file__).resolve().parent.parent


def _model(**overrides) -> C3D:
    return C3D(tiny_config(**overrides)).eval()


def _refused(path: Path, pattern: str, seconds: float = 5.0) -> str:
    """load_model(path) raises a one-line WeightsError naming `path` and matching `pattern`, within `seconds`."""
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=pattern) as err:
        load_model(path)
    assert time.perf_counter() - start < seconds
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def _safetensors(header: str | bytes, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


# ---------------------------------------------------------------------------------------------- native headers


@pytest.mark.parametrize(
    ("offsets", "pattern"),
    [("5", "data_offsets 5, not"), ('"abc"', "data_offsets 'abc', not"), ("[]", r"data_offsets \[\], not"),
     ("[8, 0]", "0 <= begin <= end"), ("[0, 1e3]", "data_offsets"), ("[true, 4]", "data_offsets"),
     ("[0, 8]", r"needs 4 bytes but its data_offsets \[0, 8\] hold 8")],
)
def test_malformed_data_offsets(tmp_path: Path, offsets: str, pattern: str) -> None:
    path = tmp_path / "off.safetensors"
    entry = {"dtype": "F32", "shape": [1], "data_offsets": "OFFSETS"}
    header = json.dumps({"conv1a.weight": entry}).replace('"OFFSETS"', offsets)
    path.write_bytes(_safetensors(header, bytes(4)))
    _refused(path, f"corrupt safetensors header: tensor 'conv1a.weight'.*{pattern}")


@pytest.mark.parametrize(
    ("header", "data", "pattern"),
    [
        ('{"a":' + "[" * 200_000 + "]" * 200_000 + "}", b"", "nesting deeper than 3 levels"),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],'
         '"data_offsets":[0,4]}}', bytes(4), "appears twice"),
        ('{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}', bytes(1), "dtype 'F8_E4M3'; c3dnet loads"),
        ('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', bytes(4), r"shape \[-1\]"),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],'
         '"data_offsets":[2,6]}}', bytes(8), "overlaps the previous tensor"),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8), "leaves a gap"),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(12), "corrupt safetensors file: its "
                                                                              "tensors need"),
        ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(2), "truncated safetensors file"),
        ('{"__metadata__":{"format":3},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4),
         "__metadata__ is not a map of strings"),
        ('{"a":[' + '"x",' * 400_000 + '"x"]}', b"", r"more than 300,000 items"),
        ('{"a":[1,2}', b"", "corrupt safetensors header"),
        (b'{"a":"\xff\xfe"}', b"", "corrupt safetensors header"),
        ("[1, 2]", b"", "unknown file type"),  # not '{': not taken for safetensors at all
        ('{"a":7}', b"", "tensor 'a' is a int, not an object"),
    ],
)
def test_malformed_native_headers(tmp_path: Path, header: str | bytes, data: bytes, pattern: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors(header, data))
    _refused(path, pattern)


def test_header_size_is_bounded_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER + 1) + b"{" + bytes(MAX_HEADER + 1))
    _refused(path, f"a safetensors header of {MAX_HEADER + 1:,} bytes")
    path.write_bytes(struct.pack("<Q", 1 << 39) + b'{"a":1}')
    _refused(path, f"truncated safetensors file: its header needs {8 + (1 << 39)} bytes")


# ------------------------------------------------------------------------------------------- native metadata


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"fc_dim": 2_000_000}, r"do not fit the model.*fc6.weight: file \(32, 256\) vs model \(2000000, 256\)"),
        ({"num_classes": 1_000_000_000}, r"head.weight: file \(5, 32\) vs model \(1000000000, 32\)"),
        ({"width_mult": 10000.0}, r"config.width_mult is 10000.0, expected a number in \(0, 1024\]"),
        ({"width_mult": 100.0}, r"conv1a.weight: file \(8, 3, 3, 3, 3\) vs model \(6400, 3, 3, 3, 3\)"),
        ({"crop_size": 10**9}, r"fc6.weight: file \(32, 256\) vs model"),
        ({"clip_len": 0}, "config.clip_len is 0, expected an integer from 1"),
        ({"num_classes": True}, "config.num_classes is True"),
        ({"width_mult": float("nan")}, "corrupt|config.width_mult"),
        ({"temporal_depths": [3, 3, 3, 3]}, "temporal_depths"),
        ({"pool5": "max"}, "config.pool5 is 'max'"),
        ({"dropout": "0.5"}, "config.dropout is '0.5'"),
        ({"layers": 3}, r"unknown config fields \['layers'\]"),
    ],
)
def test_metadata_is_checked_against_the_tensors_before_building(tmp_path: Path, change: dict,
                                                                   pattern: str) -> None:
    model = _model(clip_len=16)
    path = tmp_path / "lying.safetensors"
    save_model(model, path)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])
    config = json.loads(header["__metadata__"]["config"])
    config.update(change)
    header["__metadata__"]["config"] = json.dumps(config)
    data = path.read_bytes()[8 + header_len:]
    path.write_bytes(_safetensors(json.dumps(header), data))
    _refused(path, pattern, seconds=2.0)


def test_a_config_bigger_than_its_file_is_refused(tmp_path: Path) -> None:
    # A backbone-only native file whose config asks for a 4096 x 10^6 classifier: 4 billion parameters that
    # no tensor in the file backs.
    model = _model(clip_len=16)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "headless.safetensors"
    save_native(path, state, model.config.replace(num_classes=10**6, fc_dim=32), model.preprocess)
    message = _refused(path, "asks for 33,000,000 parameters that the file does not hold")
    assert f"at most {MAX_UNBACKED_PARAMETERS:,}" in message
    save_native(path, state, model.config.replace(num_classes=7), model.preprocess)  # a small new head is fine
    assert load_model(path).num_classes == 7


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("preprocess", '{"mean": "abc"}', "preprocess.mean is 'abc'"),
        ("preprocess", '{"std": [1, 0, 1]}', "preprocess.std"),
        ("preprocess", '{"crop_size": 1e9}', "preprocess.crop_size"),
        ("preprocess", '{"resize_hw": [128]}', "preprocess.resize_hw"),
        ("preprocess", "[1]", "'preprocess' is a list"),
        ("class_names", '["a", 3]', "list of strings"),
        ("class_names", json.dumps(["a"] * 6), "6 class names for 5 classes"),
        ("class_names", json.dumps(["a"] * 100_000), "corrupt metadata field 'class_names': more than 5 items"),
        ("extra", "[" * 100 + "]" * 100, "corrupt metadata field 'extra': nesting deeper"),
        ("config", "{", "corrupt metadata field 'config'"),
    ],
)
def test_metadata_fields_are_validated(tmp_path: Path, key: str, value: str, pattern: str) -> None:
    model = _model()
    path = tmp_path / "meta.safetensors"
    save_model(model, path)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])
    header["__metadata__"][key] = value
    path.write_bytes(_safetensors(json.dumps(header), path.read_bytes()[8 + header_len:]))
    _refused(path, pattern)


# --------------------------------------------------------------------------------------------- torch and pickle


def _torch_bytes(obj: object) -> bytes:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"c3dnet-test-{os.getpid()}.pth"
    torch.save(obj, path)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    # The bomb in small: the storage entry deflated. torch.save never compresses an entry.
    source = zipfile.ZipFile(_bytes_io(_torch_bytes({"conv1a.weight": torch.zeros(2_000_000)})))
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            out.writestr(info.filename, source.read(info), compress_type=method)
    assert path.stat().st_size < 100_000  # 8 MB of zeros inside
    _refused(path, r"bomb.pth: refused to load: entry '.*/data/0' is compressed \(.* -> 8,000,000 bytes\)")


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def test_expanded_views_and_repeated_arrays_are_refused(tmp_path: Path) -> None:
    # A 4-element storage viewed as 10^6 elements (stride 0) would become 4 MB once made contiguous.
    path = tmp_path / "expand.pth"
    torch.save({"conv1a.weight": torch.zeros(4)[:1].expand(10**6)}, path)
    _refused(path, r"refused to load: the checkpoint holds a tensor of shape \(1000000,\) viewing a storage of "
                   r"only 16 bytes")
    # One array under many keys: the tensors would hold far more bytes than the file.
    model = _model(**{"clip_len": 16})
    state = paddle_state(model)
    state.update({f"copy{i}": state["backbone.fc6.weight"] for i in range(50)})
    pdparams = tmp_path / "repeat.pdparams"
    pdparams.write_bytes(pickle.dumps(state, protocol=4))
    _refused(pdparams, r"its tensors hold [\d,]+ bytes but the file has only")


def test_nested_references_through_torch_are_linear(tmp_path: Path) -> None:
    nest: list = []
    for _ in range(45):
        nest = [nest, nest]
    path = tmp_path / "nest.pth"
    torch.save({"state_dict": mmaction2_state(_model(clip_len=16), recognizer=True), "meta": {"x": nest}}, path)
    assert path.stat().st_size < 2_000_000
    start = time.perf_counter()
    assert load_model(path).config.fc_dim == 32  # the weights beside it still load
    assert time.perf_counter() - start < 5.0


def test_devices_directories_and_fifos_are_named_for_what_they_are(tmp_path: Path) -> None:
    _refused(Path("/dev/zero"), "/dev/zero: is a character device, not a weights file")
    _refused(tmp_path, "is a directory, not a weights file")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    _refused(fifo, "is a pipe, not a weights file")  # and never opened: that would block


# ------------------------------------------------------------------------------------ state files and ONNX files


def test_training_state_is_refused_with_the_safetensors_to_use(tmp_path: Path) -> None:
    model = _model()
    state = tmp_path / "last.state.pt"
    torch.save({"format": "c3dnet-train-state-v1", "model": model.state_dict(), "iteration": 3}, state)
    with pytest.raises(TrainingStateError, match=f"training state.*Use {tmp_path / 'last.safetensors'}, written "
                                                 "beside it by the same run at the end of each epoch"):
        load_model(state)
    save_model(model, tmp_path / "last.safetensors")
    save_model(model, tmp_path / "best.safetensors")
    with pytest.raises(TrainingStateError) as err:
        read_weights(state)
    assert f"Use {tmp_path / 'last.safetensors'} or {tmp_path / 'best.safetensors'}, written" in str(err.value)


def _onnx_file(path: Path, model: C3D) -> None:
    """A minimal ONNX model carrying c3dnet's metadata, as `c3d export` writes it (without the graph)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["clips"], ["logits"])], "c3d",
                              [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, producer_name="c3dnet", opset_imports=[helper.make_opsetid("", 17)])
    metadata = {"config": json.dumps(model.config.to_dict()), "preprocess": json.dumps(model.preprocess.to_dict()),
                "class_names": json.dumps(model.class_names), "weights": "w.safetensors"}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"c3dnet.{key}", value
    onnx.save(proto, str(path))


def test_onnx_files_are_described_and_redirected_to_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = C3D(tiny_config(num_classes=3), class_names=["run", "\x1b]0;owned\x07", "jump\x1b[2J"]).eval()
    onnx_path = tmp_path / "model.onnx"
    _onnx_file(onnx_path, model)
    with pytest.raises(OnnxFileError, match=r"model.onnx: an ONNX model .* run it with `--onnx .*model.onnx`"):
        load_model(onnx_path)
    renamed = tmp_path / "model.bin"  # told apart by content too
    renamed.write_bytes(onnx_path.read_bytes())
    with pytest.raises(OnnxFileError):
        load_model(renamed)

    assert cli_main(["info", str(onnx_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["container"] == "onnx" and info["config"] == model.config.to_dict()
    assert info["class_names"] == model.class_names and info["extra"]["exported_from"] == "w.safetensors"
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert cli_main(["info", str(onnx_path)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text  # escaped, never sent to the terminal
    assert r"classes:       3: run, \x1b]0;owned\x07, jump\x1b[2J" in text


def test_info_escapes_names_and_survives_a_closed_pipe(tmp_path: Path) -> None:
    model = C3D(tiny_config(num_classes=3), class_names=["a\x1b[31m", "b\u2028", "c\x9b2J"]).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    result = subprocess.run([sys.executable, "-m", "c3dnet.cli", "info", str(path)], capture_output=True,
                            text=True, cwd=ROOT, check=True)
    assert r"classes:       3: a\x1b[31m, b\u2028, c\x9b2J" in result.stdout
    # `c3d info --json | head`: the reader is gone before the output is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run([sys.executable, "-m", "c3dnet.cli", "info", "--json", str(path)], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write_end)
    assert closed.returncode == 141 and closed.stderr == ""


def test_convert_refuses_to_overwrite_its_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.pth"
    torch.save(mmaction2_state(_model(clip_len=16), recognizer=True), src)
    original = src.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(src)
    hard = tmp_path / "hard.pth"
    os.link(src, hard)
    for dst in (src, tmp_path / "." / "a.pth", link, hard):
        assert cli_main(["convert", str(src), str(dst)]) == 2
        assert "is the source file" in capsys.readouterr().err
    assert src.read_bytes() == original
    assert cli_main(["convert", str(src), str(tmp_path / "a.safetensors")]) == 0


# -------------------------------------------------------------------------------------- building without waste


@pytest.mark.parametrize("overrides", [{}, {"pool5": "caffe", "crop_size": 48}, {"temporal_depths": (1, 3, 5, 7, 3)},
                                       {"width_mult": 0.3, "fc_dim": 7, "in_channels": 2, "clip_len": 1}])
def test_expected_shapes_match_the_model(overrides: dict) -> None:
    config = tiny_config(**overrides)
    with torch.device("meta"):
        model = C3D(config)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_loaded_parameters_are_the_files_tensors_and_a_new_head_is_initialised(tmp_path: Path) -> None:
    model = _model(clip_len=16)
    path = tmp_path / "m.pth"
    torch.save(mmaction2_state(model, recognizer=False), path)
    weights = read_weights(path)
    copied = model_from_weights(weights, num_classes=500)
    assert copied.fc6.weight.data_ptr() != weights.state["fc6.weight"].data_ptr()
    shared = model_from_weights(weights, num_classes=500, copy=False)
    assert shared.fc6.weight.data_ptr() == weights.state["fc6.weight"].data_ptr()
    assert all(not p.is_meta and p.dtype == torch.float32 and p.requires_grad for p in shared.parameters())
    torch.testing.assert_close(shared.conv3b.weight, model.conv3b.weight)
    head = shared.head.weight
    assert head.shape == (500, 32) and 0.008 < head.std().item() < 0.012  # C3D's head init, Normal(0, 0.01)
    assert torch.count_nonzero(shared.head.bias) == 0
    with pytest.raises(WeightsError, match="num_classes must be from 1 to 1,000,000"):
        model_from_weights(weights, num_classes=10**9)


def test_missing_backbone_layers_are_initialised_with_strict_false(tmp_path: Path) -> None:
    model = _model(clip_len=16)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("conv5b.")}
    path = tmp_path / "partial.safetensors"
    save_native(path, state, model.config, model.preprocess)
    with pytest.raises(WeightsError, match="missing backbone weights"):
        load_model(path)
    loaded = load_model(path, strict=False)
    assert not loaded.conv5b.weight.is_meta and loaded.conv5b.weight.abs().sum() > 0
    torch.testing.assert_close(loaded.conv5a.weight, model.conv5a.weight)


# ----------------------------------------------------------------------------------------------------- full size


_RSS_CHILD = r"""
import json, sys, time
import c3dnet.weights, numpy, torch
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
after_import = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: the peak from here on
start = time.perf_counter()
model = c3dnet.weights.load_model(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"peak": status("VmHWM:") - after_import, "seconds": seconds,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "fc6_sum": float(model.fc6.weight.double().sum())}))
"""


@pytest.mark.slow
def test_full_size_files_load_within_twice_their_size(tmp_path: Path) -> None:
    # The reference C3D (78,409,573 parameters): native (313 MB), the same in float16, the seed's .pdparams, and
    # an mmengine checkpoint (598 MB: the weights, their momentum buffers, mmengine's metadata objects) read by
    # c3dnet's own torch-zip reader, whose optimizer state is never read: its peak is the weights' size, not 2N.
    from tests.test_mmengine_checkpoints import mmengine_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = C3D(C3DConfig(num_classes=101)).eval()
    native, half, pdparams = tmp_path / "ref.safetensors", tmp_path / "half.safetensors", tmp_path / "ref.pdparams"
    save_model(model, native)
    save_native(half, {k: v.half() for k, v in model.state_dict().items()}, model.config, model.preprocess)
    pdparams.write_bytes(pickle.dumps(paddle_state(model), protocol=4))
    mmengine = save_checkpoint(mmengine_checkpoint(model), tmp_path / "ref_mmengine.pth")
    weight_bytes = sum(v.nbytes for v in model.state_dict().values())
    fc6_sum = model.fc6.weight.double().sum().item()
    expected = {native: fc6_sum, pdparams: fc6_sum, half: model.fc6.weight.half().double().sum().item(),
                mmengine: fc6_sum}
    del model
    for path, fc6_sum in expected.items():
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path)], capture_output=True, text=True,
                             cwd=ROOT, check=True, timeout=300)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        size = path.stat().st_size
        assert result["parameters"] == 78_409_573
        assert np.isclose(result["fc6_sum"], fc6_sum, rtol=1e-9, atol=1e-6)
        bound = weight_bytes if path is mmengine else 2 * size
        assert result["peak"] <= bound + 64 * 2**20, (path.name, result["peak"] / 2**20, size / 2**20)
        assert result["seconds"] < 30
