"""`c3d lite`: synthetic data -> train 1 epoch -> test -> export -> ONNX predict -> extract + probe, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c3dnet.cli import main
from c3dnet.export import OnnxC3D
from c3dnet.features import read_manifest


@pytest.mark.slow
def test_lite_chain(tmp_path, capsys):
    assert main(["lite", "--work-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["synthetic", "train", "test", "export", "onnx_predict", "extract_probe"]
    assert report["synthetic"] == {**report["synthetic"], "train_videos": 16, "test_videos": 8, "classes": 4}
    assert report["train"]["iterations"] == 4 and np.isfinite(report["train"]["final_loss"])
    assert report["test"]["num_videos"] == 8 and report["test"]["clips_per_video"] == 10
    assert 0 <= report["test"]["top1"] <= report["test"]["top5"] <= 1
    assert report["export"]["max_rel_diff"] <= 1e-4 and report["export"]["max_abs_diff"] < 1e-3
    assert report["onnx_predict"]["agree"] == 8 and report["onnx_predict"]["max_prob_diff"] < 1e-4
    # The test step (PyTorch, the engine's evaluate) and the ONNX predict step score the same 10 clips.
    assert report["onnx_predict"]["top1"] == pytest.approx(report["test"]["top1"])
    assert report["extract_probe"]["videos"] == 24
    onnx_model = OnnxC3D(tmp_path / "model.onnx")
    assert onnx_model.class_names is not None and len(onnx_model.class_names) == 4
    assert onnx_model.config.clip_len == 8 and onnx_model.preprocess.short_side == 36
    entries = read_manifest(tmp_path / "features")
    assert len(entries) == 24 and {e.layer for e in entries} == {"fc6"}
    assert {e.weights for e in entries} == {str(tmp_path / "model.onnx")}
