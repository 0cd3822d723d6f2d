"""ONNX export: parity with PyTorch for every output (at full size too), dynamic batch, embedded metadata, nothing
written unless verified, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c3dnet import export as export_module
from c3dnet.cli import main
from c3dnet.commands import export as export_command
from c3dnet.data.transforms import normalize
from c3dnet.errors import WeightsError
from c3dnet.export import (
    DEFAULT_TOLERANCE,
    OUTPUT_NAMES,
    ExportError,
    OnnxC3D,
    OutputDiff,
    export_onnx,
    verification_clips,
)
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config


@pytest.mark.parametrize("pool5", ["padded", "caffe"])
def test_onnx_matches_torch_on_every_output(tmp_path, pool5):
    model = C3D(tiny_config(pool5=pool5, crop_size=40), class_names=list("abcde")).eval()
    report = export_onnx(model, tmp_path / "m.onnx", verify_batch=3)
    assert set(report.diffs) == set(OUTPUT_NAMES) and report.verified_batch == 3
    assert report.worst_rel_diff <= DEFAULT_TOLERANCE
    assert all(d.max_abs_torch > 1 for d in report.diffs.values())  # clips of real magnitude, not near zero
    onnx_model = OnnxC3D(tmp_path / "m.onnx")
    for batch in (1, 4):  # traced with 2: both other sizes go through the dynamic axis
        x = torch.randn(batch, *model.input_shape) * 50
        with torch.inference_mode():
            expected_logits = model(x)
            expected_fc6 = model.forward_features(x, "fc6")
            expected_pool5 = model.forward_features(x, "pool5")
        torch.testing.assert_close(onnx_model(x), expected_logits, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(onnx_model.forward_features(x, "fc6"), expected_fc6, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(onnx_model.forward_features(x.numpy(), "pool5"), expected_pool5,
                                   atol=1e-3, rtol=1e-4)


def test_metadata_round_trip(tmp_path):
    preprocess = Preprocess(mean=(90.25, 97.66, 101.41), channel_order="BGR", resize_hw=(36, 48), clip_len=8,
                            crop_size=32)
    model = C3D(tiny_config(num_classes=3), preprocess=preprocess, class_names=["run", "jump", "swim"])
    export_onnx(model, tmp_path / "m.onnx", verify=False, extra_metadata={"weights": "w.safetensors"})
    onnx_model = OnnxC3D(tmp_path / "m.onnx")
    assert onnx_model.config == model.config
    assert onnx_model.preprocess == model.preprocess
    assert onnx_model.preprocess.channel_order == "BGR"
    assert onnx_model.class_names == ["run", "jump", "swim"]
    assert onnx_model.feature_dims == model.feature_dims
    assert onnx_model.metadata["weights"] == "w.safetensors"
    assert json.loads(onnx_model.metadata["config"])["num_classes"] == 3


def test_wrong_input_shape_and_bad_files(tmp_path):
    model = C3D(tiny_config()).eval()
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    onnx_model = OnnxC3D(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 32, 32\)"):
        onnx_model(np.zeros((1, 3, 16, 32, 32), np.float32))
    with pytest.raises(WeightsError, match="not found"):
        OnnxC3D(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(WeightsError, match="junk.onnx"):
        OnnxC3D(tmp_path / "junk.onnx")


def test_export_rejects_old_opset(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(C3D(tiny_config()), tmp_path / "m.onnx", opset=13)


def _files(folder) -> list[str]:
    """Every file and folder under `folder`, hidden ones (temporaries) included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_full_size_reference_c3d_matches_onnx_runtime(tmp_path):
    """The reference C3D (78M parameters, 16x112x112 clips, 101 classes) on inputs of real magnitude: pixels of
    0..255 minus the mean, where logits and fc6 run into the hundreds."""
    torch.manual_seed(11)
    model = C3D(C3DConfig(num_classes=101)).eval()
    assert model.input_shape == (3, 16, 112, 112) and model.preprocess.mean == (104.0, 117.0, 128.0)
    report = export_onnx(model, tmp_path / "c3d.onnx")
    assert _files(tmp_path) == ["c3d.onnx"] and report.external_data is None
    params = sum(p.numel() for p in model.parameters())
    assert params > 78e6 and abs(report.size_bytes - 4 * params) < 1e6  # float32 weights, one file
    assert set(report.diffs) == set(OUTPUT_NAMES)
    assert max(report.diffs["logits"].max_abs_torch, report.diffs["fc6"].max_abs_torch) > 100
    assert report.worst_rel_diff <= DEFAULT_TOLERANCE

    # An independent check on other clips, one at a time (the dynamic axis at 1): a uint8 clip put through the
    # model's own preprocessing, as `c3d predict` feeds it.
    onnx_model = OnnxC3D(tmp_path / "c3d.onnx")
    assert onnx_model.config == model.config and onnx_model.num_classes == 101
    clip = torch.randint(0, 256, (1, 3, 16, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    x = normalize(clip, model.preprocess)
    assert x.abs().max() > 120
    with torch.inference_mode():
        expected = {"logits": model(x), "fc6": model.forward_features(x, "fc6")}
    got = {"logits": onnx_model(x), "fc6": onnx_model.forward_features(x, "fc6")}
    for name in expected:
        scale = expected[name].abs().max().item()
        assert (got[name] - expected[name]).abs().max().item() / scale <= DEFAULT_TOLERANCE, name
    assert torch.equal(got["logits"].argmax(1), expected["logits"].argmax(1))


def test_failed_verification_writes_nothing(tmp_path):
    """Float32 rounding differs by about 1e-7..1e-6 of each output's scale: a tolerance of 1e-12 must fail."""
    model = C3D(tiny_config()).eval()
    with pytest.raises(ExportError) as raised:
        export_onnx(model, tmp_path / "m.onnx", tolerance=1e-12)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'm.onnx'}: not written")
    assert "max |ONNX - PyTorch| / max |PyTorch|" in message and "--tolerance" in message
    assert all(name in message for name in OUTPUT_NAMES)
    assert _files(tmp_path) == []  # no model, no staging folder

    # An earlier export at the same path stays as it was.
    export_onnx(model, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ExportError, match="earlier file there is left as it was"):
        export_onnx(C3D(tiny_config(num_classes=7)), tmp_path / "m.onnx", tolerance=1e-12)
    assert (tmp_path / "m.onnx").read_bytes() == before and _files(tmp_path) == ["m.onnx"]


def test_relative_difference_by_hand():
    assert OutputDiff(0.003, 300.0).rel_diff == pytest.approx(1e-5)  # the full-size failure of an absolute 1e-3
    assert OutputDiff(0.0, 0.0).rel_diff == 0.0
    assert OutputDiff(1e-7, 0.0).rel_diff == float("inf")


def test_verification_clips_span_the_pixel_range():
    model = C3D(tiny_config())
    x = verification_clips(model, batch=3)  # uniform noise, smooth, saturated; normalised: pixel - mean
    assert x.shape == (3, *model.input_shape) and x.dtype == torch.float32
    for clip in (x[0], x[2]):  # both reach pixels 0 and 255 in every channel
        assert clip.amin(dim=(1, 2, 3)).tolist() == [-104.0, -117.0, -128.0]
        assert clip.amax(dim=(1, 2, 3)).tolist() == [151.0, 138.0, 127.0]
    assert len(x[2].unique()) == 6 and len(x[1].unique()) > 1000  # saturated: 2 values a channel; smooth: many
    torch.testing.assert_close(verification_clips(model, batch=3), x)  # seeded


def test_external_data_is_staged_and_published_with_the_model(tmp_path, monkeypatch):
    """Above 2 GiB the weights go to `<name>.data` beside the model: forced here on a tiny model."""
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    model = C3D(tiny_config()).eval()
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path / "m.onnx", tolerance=1e-12)
    assert _files(tmp_path) == []
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.external_data == tmp_path / "m.onnx.data"
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]
    weights = (tmp_path / "m.onnx.data").stat().st_size
    assert weights > 0.9 * 4 * sum(p.numel() for p in model.parameters())
    assert (tmp_path / "m.onnx").stat().st_size < weights and report.size_bytes == weights + (
        tmp_path / "m.onnx").stat().st_size
    x = torch.randn(2, *model.input_shape) * 50
    with torch.inference_mode():
        torch.testing.assert_close(OnnxC3D(tmp_path / "m.onnx")(x), model(x), atol=1e-3, rtol=1e-4)


def test_export_command_reports_relative_differences(tmp_path, capsys):
    model = C3D(tiny_config()).eval()
    save_model(model, tmp_path / "w.safetensors")
    out = tmp_path / "out" / "w.onnx"
    assert main(["export", "--weights", str(tmp_path / "w.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "max |difference| / max |PyTorch|" in printed.out and "(tolerance 0.0001)" in printed.out
    assert (printed.out + printed.err).count("ONNX Runtime vs PyTorch") == 1  # the check is printed once
    assert OnnxC3D(out).metadata["weights"] == str(tmp_path / "w.safetensors")
    assert main(["export", "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "bad.onnx"),
                 "--tolerance", "1e-12"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.onnx'}: not written" in err and "raise --tolerance" in err
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".bad.onnx*"))
    assert export_command.DEFAULT_TOLERANCE == DEFAULT_TOLERANCE


@pytest.mark.parametrize("flags, message", [(["--opset", "13"], "--opset 13: C3D's graph needs opset 17"),
                                            (["--tolerance", "0"], "--tolerance 0.0: must be > 0")])
def test_export_command_refuses_bad_flags(tmp_path, capsys, flags, message):
    save_model(C3D(tiny_config()), tmp_path / "w.safetensors")
    out = tmp_path / "w.onnx"
    assert main(["export", "--weights", str(tmp_path / "w.safetensors"), "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()
