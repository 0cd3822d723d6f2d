"""ONNX export: parity with PyTorch for every output, dynamic batch, embedded metadata, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c3dnet.errors import WeightsError
from c3dnet.export import OUTPUT_NAMES, OnnxC3D, export_onnx
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from tests.conftest import tiny_config


@pytest.mark.parametrize("pool5", ["padded", "caffe"])
def test_onnx_matches_torch_on_every_output(tmp_path, pool5):
    model = C3D(tiny_config(pool5=pool5, crop_size=40), class_names=list("abcde")).eval()
    report = export_onnx(model, tmp_path / "m.onnx", verify_batch=3)
    assert set(report.max_abs_diff) == set(OUTPUT_NAMES)
    assert report.worst_diff < 1e-3
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
