"""`c3d lite`: synthetic data -> train 1 epoch -> test -> export -> ONNX predict -> extract + probe, end to end, with a
tiny C3D and with the full-size reference one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c3dnet.cli import main
from c3dnet.commands.lite import FULL_SIZE
from c3dnet.data.synthetic import SynthParams
from c3dnet.engine.config import load_config
from c3dnet.export import OnnxC3D
from c3dnet.features import read_manifest
from c3dnet.model import C3DConfig
from c3dnet.preprocess import SEED_PREPROCESS


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
    assert report["onnx_predict"]["max_rel_logit_diff"] <= 1e-4
    # The test step (PyTorch, the engine's evaluate) and the ONNX predict step score the same 10 clips.
    assert report["onnx_predict"]["top1"] == pytest.approx(report["test"]["top1"])
    assert report["extract_probe"]["videos"] == 24
    onnx_model = OnnxC3D(tmp_path / "model.onnx")
    assert onnx_model.class_names is not None and len(onnx_model.class_names) == 4
    assert onnx_model.config.clip_len == 8 and onnx_model.preprocess.short_side == 36
    entries = read_manifest(tmp_path / "features")
    assert len(entries) == 24 and {e.layer for e in entries} == {"fc6"}
    assert {e.weights for e in entries} == {str(tmp_path / "model.onnx")}


def test_full_size_scale_is_the_reference_c3d():
    cfg = load_config(None, list(FULL_SIZE.overrides))
    assert cfg.model_config(101) == C3DConfig(num_classes=101)  # the reference C3D, dropout included
    assert cfg.preprocess_record() == SEED_PREPROCESS  # 128 short side, 112 crops, 16 frames, the seed's mean
    synth = SynthParams(**FULL_SIZE.synth)
    assert min(synth.height, synth.width) >= 128 and synth.frames >= 16  # a 112 crop of 16 frames fits
    assert cfg.optim.epochs == 1 and cfg.data.workers == 0


@pytest.mark.slow
def test_lite_full_size_chain(tmp_path, capsys):
    """The whole chain with the 78M-parameter reference C3D: train, test, export, ONNX predict and extract."""
    assert main(["lite", "--full-size", "--work-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["synthetic"] == {**report["synthetic"], "train_videos": 2, "test_videos": 2, "classes": 2}
    assert report["train"]["parameters"] == 78_003_970 and report["train"]["iterations"] == 2
    assert np.isfinite(report["train"]["final_loss"])
    assert report["test"]["num_videos"] == 2 and report["test"]["clips_per_video"] == 10
    # Full-size outputs run into the hundreds: absolute differences of ~1e-3 are float32 rounding.
    assert report["export"]["max_rel_diff"] <= 1e-4
    assert report["onnx_predict"]["agree"] == 2 and report["onnx_predict"]["max_rel_logit_diff"] <= 1e-4
    assert report["onnx_predict"]["top1"] == pytest.approx(report["test"]["top1"])
    onnx_model = OnnxC3D(tmp_path / "model.onnx")
    assert onnx_model.config == C3DConfig(num_classes=2) and onnx_model.preprocess == SEED_PREPROCESS
    entries = read_manifest(tmp_path / "features")
    assert len(entries) == 4 and {e.layer for e in entries} == {"fc6"}
    assert report["extract_probe"]["videos"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "features", "model.onnx", "train"]
