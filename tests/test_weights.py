"""Weight files: the native format, importers for every foreign layout, safety and clear errors.

Each foreign layout is built here by hand from a model's own state dict (independently of
`c3dnet.weights.layouts`), saved in that layout's file type, loaded, and compared output for output.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main as cli_main
from c3dnet.errors import WeightsError
from c3dnet.model import C3D, C3DConfig, count_parameters
from c3dnet.preprocess import CAFFE_PREPROCESS, Preprocess
from c3dnet.weights import infer_config, load_model, map_layout, read_metadata, save_model, save_native
from tests.conftest import tiny_config

DATA = Path(__file__).parent / "data" / "weights"
CONVS = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
# 16 frames of 32x32 leave a 2x2 pool5 grid: fc6 is 256 -> 32, not square, so a missing transpose cannot pass.
FOREIGN = dict(clip_len=16, crop_size=32)


def _model(**overrides) -> C3D:
    model = C3D(tiny_config(**overrides)).eval()
    with torch.no_grad():  # non-zero biases, so a bias that went missing or astray shows in the outputs
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(0.0, 0.1)
    return model


def _clip(model: C3D, n: int = 1) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(1))


def _fc(model: C3D, pool5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fc7 = torch.relu(model.fc7(torch.relu(model.fc6(pool5))))
    return fc7, model.head(fc7)


def _same_outputs(a: C3D, b: C3D, head: bool = True) -> None:
    """pool5, fc7 and logits of `b` equal those of `a` (one conv pass each: 3D convs are slow on 2 cores)."""
    x = _clip(a)
    with torch.no_grad():
        pa, pb = a.forward_pool5(x), b.forward_pool5(x)
        torch.testing.assert_close(pb, pa)
        (fa, la), (fb, lb) = _fc(a, pa), _fc(b, pb)
        torch.testing.assert_close(fb, fa)
        if head:
            torch.testing.assert_close(lb, la)


def _rename(state: dict[str, torch.Tensor], names: dict[str, str]) -> OrderedDict:
    out = OrderedDict()
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module in names:
            out[f"{names[module]}.{param}"] = value.clone()
    return out


def mmaction2_state(model: C3D, recognizer: bool) -> OrderedDict:
    prefix = "backbone." if recognizer else ""
    names = {**{c: f"{prefix}{c}.conv" for c in CONVS}, "fc6": f"{prefix}fc6", "fc7": f"{prefix}fc7"}
    if recognizer:
        names["head"] = "cls_head.fc_cls"
    return _rename(model.state_dict(), names)


def paddle_state(model: C3D) -> dict[str, object]:
    names = {**{c: f"backbone.{c}._conv" for c in CONVS}, "fc6": "backbone.fc6", "fc7": "backbone.fc7",
             "head": "cls_head.fc_cls"}
    state = {k: v.numpy() for k, v in _rename(model.state_dict(), names).items()}
    for key in ("backbone.fc6.weight", "backbone.fc7.weight", "cls_head.fc_cls.weight"):
        state[key] = np.ascontiguousarray(state[key].T)  # Paddle Linear weights are [in, out]
    state["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(state)}
    return state


def caffe_state(model: C3D) -> OrderedDict:
    names = {**{c: c for c in CONVS}, "conv1a": "conv1", "conv2a": "conv2", "fc6": "fc6", "fc7": "fc7", "head": "fc8"}
    return _rename(model.state_dict(), names)


def sequential_state(model: C3D, head: bool = True) -> OrderedDict:
    names = {c: f"features.{i}" for c, i in zip(CONVS, (0, 3, 6, 8, 11, 13, 16, 18))}
    names.update({"fc6": "classifier.0", "fc7": "classifier.3"})
    if head:
        names["head"] = "classifier.6"
    return _rename(model.state_dict(), names)


# ----------------------------------------------------------------------------------------------- native format


def test_native_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    preprocess = Preprocess(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), channel_order="BGR", resize_hw=(40, 53),
                            crop_size=32, clip_len=8, frame_interval=2)
    model = C3D(tiny_config(temporal_depths=(1, 3, 3, 5, 1)), preprocess=preprocess,
                class_names=["a", "b", "c", "d", "e"]).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path, extra={"epoch": 7, "top1": 0.5})
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind

    meta = read_metadata(path)
    assert meta["format"] == "c3dnet" and meta["source_format"] == "c3dnet"
    assert C3DConfig.from_dict(meta["config"]) == model.config
    assert Preprocess.from_dict(meta["preprocess"]) == preprocess
    assert meta["class_names"] == ["a", "b", "c", "d", "e"]
    assert meta["extra"] == {"epoch": 7, "top1": 0.5}

    loaded = load_model(path)
    assert loaded.config == model.config and loaded.preprocess == preprocess
    assert loaded.class_names == model.class_names and not loaded.training
    _same_outputs(model, loaded)


def test_save_model_unwraps_compiled_and_parallel_models(tmp_path: Path) -> None:
    class Compiled(torch.nn.Module):  # what torch.compile returns keeps the model as `_orig_mod` (importing
        def __init__(self, inner: torch.nn.Module) -> None:  # torch._dynamo just to wrap costs seconds)
            super().__init__()
            self._orig_mod = inner

    model = _model()
    wrapped = torch.nn.DataParallel(Compiled(model))
    save_model(wrapped, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors")
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.conv1a.weight, model.conv1a.weight)
    with pytest.raises(WeightsError, match="needs a c3dnet C3D model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_read_metadata_refuses_foreign_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"conv1a.weight": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="without c3dnet metadata.*c3d convert"):
        read_metadata(plain)
    pth = tmp_path / "m.pth"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(WeightsError, match="not a native c3dnet file"):
        read_metadata(pth)


def test_plain_safetensors_in_c3dnet_layout_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _model(**FOREIGN)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    assert loaded.config == model.config.replace(pool5="padded")
    _same_outputs(model, loaded)


# ------------------------------------------------------------------------------------------------ foreign files


@pytest.mark.parametrize("wrapped", [False, True])
def test_mmaction2_recognizer(tmp_path: Path, wrapped: bool) -> None:
    model = _model(**FOREIGN)
    state = mmaction2_state(model, recognizer=True)
    path = tmp_path / "c3d.pth"
    # mmengine checkpoints keep numpy values in "meta"; those load too (numpy reconstruction only).
    meta = {"epoch": np.int64(45), "mmaction2_version": "1.2.0", "mean": np.array([104.0, 117.0, 128.0])}
    torch.save({"state_dict": state, "meta": meta} if wrapped else state, path)
    loaded = load_model(path)
    assert loaded.source_format == "mmaction2" and loaded.preprocess == Preprocess(clip_len=16, crop_size=32)
    assert loaded.config == model.config
    _same_outputs(model, loaded)


def test_mmaction2_backbone_only_gets_a_new_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(**FOREIGN)
    path = tmp_path / "backbone.pth"
    torch.save(mmaction2_state(model, recognizer=False), path)
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        loaded = load_model(path, num_classes=7)
    assert loaded.num_classes == 7 and loaded.config.num_classes == 7
    _same_outputs(model, loaded, head=False)
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        load_model(path)
    assert "no classifier" in caplog.text


def test_paddle_pdparams_transposes_linears(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    assert model.fc6.weight.shape == (32, 256)
    path = tmp_path / "c3d.pdparams"
    path.write_bytes(pickle.dumps(paddle_state(model), protocol=4))
    loaded = load_model(path)
    assert loaded.source_format == "paddle" and loaded.config == model.config
    torch.testing.assert_close(loaded.fc7.weight, model.fc7.weight)  # square: only the values tell
    _same_outputs(model, loaded)


class _PaddleTensor:
    """Pickles like a paddle.Tensor nested in a larger object: tuple((internal name, ndarray))."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def __reduce__(self):
        return tuple, ((self.name, self.array),)


def test_paddle_training_checkpoint_with_nested_tensors(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    state = {k: _PaddleTensor(f"p{i}", v) for i, (k, v) in enumerate(paddle_state(model).items()) if "@@" not in k}
    path = tmp_path / "checkpoint.pdparams"
    path.write_bytes(pickle.dumps({"model": state, "epoch": 12}, protocol=4))
    _same_outputs(model, load_model(path))


def test_real_paddle_file_reproduces_paddle_logits() -> None:
    # Written by PaddlePaddle 3.3.1 itself (tests/data/weights/make_paddle_fixture.py), seed-style key names.
    model = load_model(DATA / "paddle_tiny.pdparams")
    assert model.source_format == "paddle"
    assert model.config.temporal_depths == (3, 3, 3, 1, 1) and model.config.fc_dim == 12
    x = torch.from_numpy(np.load(DATA / "paddle_tiny_input.npy").astype(np.float32))
    expected = np.load(DATA / "paddle_tiny_logits.npy")
    with torch.no_grad():
        logits = model(x).numpy()
    assert np.abs(logits - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize("container", ["torch", "pickle"])
def test_caffe_conversion_implies_caffe_pooling_and_preprocessing(tmp_path: Path, container: str) -> None:
    # At 48x48 the pool5 input is 3x3: Caffe's ceil-mode windows [0,1] [2] differ from padded [-1,0] [1,2].
    model = _model(clip_len=16, crop_size=48, pool5="caffe", num_classes=487)
    state = caffe_state(model)
    path = tmp_path / "c3d.pickle"
    if container == "torch":
        torch.save(state, path)
    else:  # a protocol-0 pickle of numpy arrays in an OrderedDict, as old Python 2 conversion scripts wrote
        path.write_bytes(pickle.dumps(OrderedDict((k, v.numpy()) for k, v in state.items()), protocol=0))
    loaded = load_model(path)
    assert loaded.source_format == "caffe" and loaded.config == model.config
    assert loaded.config.pool5 == "caffe"
    assert loaded.preprocess == Preprocess.from_dict({**CAFFE_PREPROCESS.to_dict(), "crop_size": 48})
    _same_outputs(model, loaded)
    padded = C3D(model.config.replace(pool5="padded")).eval()
    padded.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = _clip(model)
        assert not torch.allclose(padded.forward_pool5(x), loaded.forward_pool5(x))
    # Asked for explicitly, the padded pooling of the seed and mmaction2 applies instead.
    as_padded = load_model(path, pool5="padded")
    assert as_padded.config == padded.config and as_padded.preprocess == loaded.preprocess
    _same_outputs(padded, as_padded)


@pytest.mark.parametrize("head", [True, False])
def test_sequential_port(tmp_path: Path, head: bool) -> None:
    model = _model(**FOREIGN)
    path = tmp_path / "port.pt"
    torch.save(sequential_state(model, head=head), path)
    loaded = load_model(path, num_classes=None if head else 5)
    assert loaded.source_format == "sequential" and loaded.config.fc_dim == 32
    _same_outputs(model, loaded, head=head)


def test_pool5_override_refits_the_input_size(tmp_path: Path) -> None:
    # Caffe weights under Sequential names: the layout implies padded pooling, whose 2x2 pool5 grid comes from
    # 32x32 inputs; with pool5="caffe" the same grid needs 48x48 inputs, and the input size is refitted.
    model = _model(clip_len=16, crop_size=48, pool5="caffe")
    path = tmp_path / "caffe_port.pt"
    torch.save(sequential_state(model), path)
    assert load_model(path).config.crop_size == 32  # padded pooling gets a 2x2 grid from 32x32
    loaded = load_model(path, pool5="caffe")
    assert loaded.config == model.config and loaded.preprocess.crop_size == 48
    _same_outputs(model, loaded)


@pytest.mark.parametrize("zipfile", [True, False])
def test_dataparallel_prefix_and_float16_file(tmp_path: Path, zipfile: bool) -> None:
    model = _model(**FOREIGN)
    path = tmp_path / "dp.pth"
    # The pre-1.6 torch.save format too: old ports (and c3d.pickle) were written that way.
    torch.save({f"module.{k}": v.half() for k, v in model.state_dict().items()}, path,
               _use_new_zipfile_serialization=zipfile)
    loaded = load_model(path)
    assert loaded.fc6.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.fc6.weight, model.fc6.weight.half().float())
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="cut.pth: corrupt or truncated torch checkpoint"):
        load_model(cut)


def test_reference_size_shapes_infer_the_reference_config() -> None:
    with torch.device("meta"):  # shapes only: no 300 MB of weights on the CPU
        reference = C3D(C3DConfig(num_classes=101))
        caffe = C3D(C3DConfig(num_classes=487, pool5="caffe"))
    for state, expected in ((paddle_like(reference), reference.config), (caffe_state(caffe), caffe.config)):
        mapped = map_layout("ref", state)
        assert infer_config("ref", mapped.state, caffe=mapped.layout.caffe) == expected
    assert count_parameters(reference) == 78_409_573


def paddle_like(model: C3D) -> dict[str, torch.Tensor]:
    names = {**{c: f"backbone.{c}._conv" for c in CONVS}, "fc6": "backbone.fc6", "fc7": "backbone.fc7",
             "head": "cls_head.fc_cls"}
    state = dict(_rename(model.state_dict(), names))
    for key in ("backbone.fc6.weight", "backbone.fc7.weight", "cls_head.fc_cls.weight"):
        state[key] = state[key].t()
    return state


def test_reduced_geometry_is_inferred() -> None:
    # Widths x1/4, depths 1-3-3-5-5, 64x64 crops (pool5 grid 1x3x3): all read back from shapes alone.
    config = C3DConfig(num_classes=3, width_mult=0.25, fc_dim=24, temporal_depths=(1, 3, 3, 5, 5), crop_size=64)
    with torch.device("meta"):
        model = C3D(config)
    mapped = map_layout("m", mmaction2_state(model, recognizer=True))
    assert infer_config("m", mapped.state) == config


# ------------------------------------------------------------------------------------------- classifier changes


def test_new_class_count_reinitialises_the_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(**FOREIGN)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        loaded = load_model(path, class_names=["x", "y", "z"])
    assert "re-initialising the classifier" in caplog.text
    assert loaded.num_classes == 3 and loaded.class_names == ["x", "y", "z"]
    _same_outputs(model, loaded, head=False)
    same = load_model(path, num_classes=5, class_names=list("abcde"))
    assert same.class_names == list("abcde")
    torch.testing.assert_close(same.head.weight, model.head.weight)
    with pytest.raises(WeightsError, match="2 class names given for num_classes=3"):
        load_model(path, num_classes=3, class_names=["a", "b"])


# ------------------------------------------------------------------------------------------------------- errors


def test_shape_mismatch_names_every_key_and_both_shapes(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    path = tmp_path / "lying.safetensors"
    save_native(path, model.state_dict(), model.config.replace(fc_dim=16), model.preprocess)
    with pytest.raises(WeightsError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message
    assert "fc6.weight: file (32, 256) vs model (16, 256)" in message
    assert "fc7.weight: file (32, 32) vs model (16, 16)" in message
    assert "head.weight: file (5, 32) vs model (5, 16)" in message


def test_inconsistent_foreign_shapes_are_clear_errors(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    state = mmaction2_state(model, recognizer=True)
    state["backbone.conv3b.conv.weight"] = torch.zeros(8, 7, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"conv3b.weight has shape \(8, 7, 3, 3, 3\)"):
        load_model(path)
    partial = {k: v for k, v in mmaction2_state(model, recognizer=True).items() if "conv5b" not in k}
    torch.save(partial, path)
    with pytest.raises(WeightsError, match="missing 'conv5b.weight'"):
        load_model(path)


def test_unknown_layout_and_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(2, 2), "fc.weight": torch.zeros(2, 2)}, path)
    expected = r"unknown key layout.*'\[backbone\.\]conv1a\.conv\.weight'.*layer1.0.conv1.weight"
    with pytest.raises(WeightsError, match=expected):
        load_model(path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(WeightsError, match="unknown file type"):
        load_model(junk)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_model(tmp_path / "missing.pth")


def test_empty_and_truncated_files(tmp_path: Path) -> None:
    model = _model(**FOREIGN)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pth: the file is empty"):
        load_model(empty)
    native = tmp_path / "m.safetensors"
    save_model(model, native)
    pth = tmp_path / "m.pth"
    torch.save(mmaction2_state(model, recognizer=True), pth)
    pdparams = tmp_path / "m.pdparams"
    pdparams.write_bytes(pickle.dumps(paddle_state(model), protocol=4))
    for path in (native, pth, pdparams):
        data = path.read_bytes()
        for fraction in (0.02, 0.5, 0.99):
            cut = tmp_path / f"cut_{fraction}_{path.name}"
            cut.write_bytes(data[: int(len(data) * fraction)])
            with pytest.raises(WeightsError, match="truncated|corrupt") as err:
                load_model(cut)
            assert str(cut) in str(err.value)


def test_malicious_files_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    model = _model(**FOREIGN)
    state = paddle_state(model)
    state["backbone.fc6.weight"] = Payload()
    pdparams = tmp_path / "evil.pdparams"
    pdparams.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(WeightsError, match="refused.*posix.system|refused.*os.system"):
        load_model(pdparams)
    pth = tmp_path / "evil.pth"
    torch.save({"state_dict": mmaction2_state(model, recognizer=True), "hook": Payload()}, pth)
    with pytest.raises(WeightsError, match="refused to load: the checkpoint asks for the global `(posix|os).system`"):
        load_model(pth)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_convert_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(**FOREIGN)
    src = tmp_path / "c3d.pdparams"
    src.write_bytes(pickle.dumps(paddle_state(model), protocol=4))
    names = tmp_path / "classInd.txt"
    names.write_text("1 Archery\n2 Biking\n\n3 Diving\n4 Fencing\n5 Rowing\n")
    dst = tmp_path / "out" / "c3d.safetensors"
    assert cli_main(["convert", str(src), str(dst), "--class-names", str(names)]) == 0
    assert "paddle -> c3dnet" in capsys.readouterr().out
    meta = read_metadata(dst)
    assert meta["class_names"] == ["Archery", "Biking", "Diving", "Fencing", "Rowing"]
    assert meta["source_format"] == "paddle" and meta["extra"] == {"converted_from": "c3d.pdparams"}
    _same_outputs(model, load_model(dst))

    assert cli_main(["info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_parameters"] == count_parameters(model) and info["num_classes"] == 5
    assert info["config"]["fc_dim"] == 32 and info["preprocess"]["mean"] == [104.0, 117.0, 128.0]
    assert cli_main(["info", str(src)]) == 0
    text = capsys.readouterr().out
    assert "source format: paddle" in text and f"parameters:    {count_parameters(model):,}" in text

    assert cli_main(["convert", str(src), str(tmp_path / "x.safetensors"), "--class-names", "a,b"]) == 2
    assert "pass --num-classes 2" in capsys.readouterr().err
    assert cli_main(["convert", str(src), str(tmp_path / "x.safetensors"), "--class-names", "a,b",
                     "--num-classes", "2", "--pool5", "caffe", "--preprocess", "caffe"]) == 0
    meta = read_metadata(tmp_path / "x.safetensors")
    assert meta["config"]["num_classes"] == 2 and meta["config"]["pool5"] == "caffe"
    # Caffe's ceil mode leaves a 1x1 grid of 32x32 inputs, so the crop refits to the smallest that gives 2x2.
    assert meta["config"]["crop_size"] == 48 and meta["preprocess"]["crop_size"] == 48
    assert meta["preprocess"]["channel_order"] == "BGR" and meta["preprocess"]["resize_hw"] == [128, 171]
