"""`c3d quantize`: int8 against fp32 on a C3D trained on the synthetic demo set and on the full-size C3D with real
videos, and the bad inputs (unreadable calibration videos, too few clips, a foreign --out, a failed check)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data.sources import load_source
from c3dnet.errors import ConfigError, DataError
from c3dnet.inference.openvino import META_FILE, OpenVinoC3D
from c3dnet.model import C3D
from c3dnet.quantize import QuantizeError, compare, cosines, quantize
from c3dnet.weights import load_model, save_model
from tests.conftest import tiny_config

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A reduced C3D trained on the demo's synthetic set (10 classes, 100 test videos): (weights, data)."""
    from c3dnet.data.synthetic import generate_synthetic
    from c3dnet.demo import DEMO_DATA, demo_config
    from c3dnet.engine.train import train

    root = tmp_path_factory.mktemp("demo")
    data = generate_synthetic(root / "data", DEMO_DATA)
    # the demo's own recipe (24 epochs, about 35 s here): with 10 or 14 epochs (70-90% top-1) the logits of many
    # videos are so close that int8 changed 8% and 2% of their top-1 (measured)
    cfg = demo_config(overrides=["train.plots=false", "train.progress=false"])
    run = train(cfg, data, work_dir=root / "work", device="cpu", overwrite=True)
    return run.last_path, data


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_the_demo_test_videos(trained, tmp_path):
    from c3dnet.engine.testing import TestOptions, test_weights

    weights, data = trained
    calib = [r.path for r in load_source(data, "train").records]  # calibrated on training videos only
    out = tmp_path / "int8"
    report = quantize(load_model(weights), calib, out, clips=96, weights=str(weights))  # --min-agreement 0.99
    assert report.path == out and report.accuracy.top1_agreement >= 0.99
    assert report.calibration_clips == 72 and report.held_out_clips == 24
    assert report.accuracy.fc6_cosine_min > 0.98  # measured 0.992
    fp32 = test_weights(weights, data, TestOptions(device="cpu")).result
    int8_run = test_weights(out, data, TestOptions(device="cpu", precision="int8"))
    int8 = int8_run.result
    assert int8_run.backend.runtime == "openvino" and int8_run.backend.precision == "int8"
    assert fp32.num_videos == int8.num_videos == 100
    agreement = float(np.mean(fp32.preds == int8.preds))  # each video's 10-clip top-1
    assert agreement >= 0.99, agreement
    assert abs(fp32.top1 - int8.top1) <= 0.01, (fp32.top1, int8.top1)
    assert fp32.top1 > 0.9  # trained (the demo reaches 100%): far above the 10% of chance
    # the figures travel with the model, and `c3d info` reads them back
    meta = json.loads((out / META_FILE).read_text())
    assert meta["precision"] == "int8" and meta["accuracy"]["top1_agreement"] == report.accuracy.top1_agreement
    import hashlib

    assert meta["weights_sha256"] == hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert meta["class_names"] == load_model(weights).class_names


def test_cosines_and_compare_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosines(a, b), [1 / np.sqrt(2), 1.0, 0.0])
    ref = {"logits": np.array([[1.0, 2.0], [3.0, 1.0]]), "pool5": np.ones((2, 3)), "fc6": np.eye(2), "fc7": np.eye(2)}
    got = {**ref, "logits": np.array([[1.0, 2.5], [1.0, 3.0]])}
    acc = compare(ref, got)
    assert acc.top1_agreement == 0.5  # the second clip's top-1 flipped
    assert acc.max_rel_error["logits"] == pytest.approx(2.0 / 3.0)  # |3 - 1| / max |ref| = 2 / 3
    assert acc.max_rel_error["fc6"] == 0.0 and acc.fc6_cosine_min == 1.0


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    torch.manual_seed(0)
    model = C3D(tiny_config(num_classes=5)).eval()
    path = tmp_path / "tiny.safetensors"
    save_model(model, path)
    return path


@pytest.fixture
def videos(tmp_path) -> list[Path]:
    from tests.media import write_index_video

    folder = tmp_path / "videos"
    folder.mkdir()
    return [write_index_video(folder / f"v{i}.avi", 20 + 4 * i, height=48, width=64, offset=i) for i in range(3)]


def test_quantize_cli_refuses_bad_calibration_and_writes_nothing(tiny_weights, videos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"broken{i}.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 4)
    out = tmp_path / "int8"
    assert main(["quantize", "--weights", str(tiny_weights), "--calib", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 calibration videos could be read" in err and "broken" in err
    assert not out.exists() and not list(tmp_path.glob(".int8*"))
    # 3 readable videos give at most 30 clips (10 each)
    assert main(["quantize", "--weights", str(tiny_weights), "--calib", str(videos[0].parent), "--out", str(out),
                 "--clips", "31"]) == 2
    err = capsys.readouterr().err
    assert "give 30 clips, fewer than --clips 31" in err and "3 readable videos" in err
    assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["quantize", "--weights", str(tiny_weights), "--calib", str(videos[0]), "--out", str(foreign)]) == 2
    assert "not written by `c3d quantize`" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_failed_check_writes_nothing_and_keeps_the_earlier_model(videos, tmp_path):
    torch.manual_seed(0)
    # untrained, 100 classes: logits so close together that int8 changes the top-1 of most clips
    model = C3D(tiny_config(num_classes=100)).eval()
    out = tmp_path / "int8"
    first = quantize(model, videos, out, clips=12, min_agreement=0.0)
    assert first.accuracy.clips == 3 and first.calibration_clips == 9  # round(0.25 * 12) held out
    assert first.accuracy.top1_agreement < 0.99 and first.accuracy.fc6_cosine_min > 0.99
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.xml", "model.bin", META_FILE}
    with pytest.raises(QuantizeError) as e:
        quantize(model, videos, out, clips=12, seed=1)  # --min-agreement 0.99
    message = str(e.value)
    assert "not written (the earlier model there is left as it was)" in message
    assert "below --min-agreement 0.99" in message and "fc6 cosine min" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".int8*"))  # no staging left behind
    # a run that passes replaces the folder whole
    quantize(model, videos, out, clips=12, min_agreement=0.0, seed=1)
    assert json.loads((out / META_FILE).read_text())["calibration"]["seed"] == 1
    assert not list(tmp_path.glob(".int8*")) and OpenVinoC3D.load(out).quantized


def test_quantize_options_are_checked(tiny_weights, videos, tmp_path):
    with pytest.raises(ConfigError, match="--holdout"):
        quantize(load_model(tiny_weights), videos, tmp_path / "o", holdout=1.0)
    with pytest.raises(DataError, match="no such video"):
        quantize(load_model(tiny_weights), [tmp_path / "missing.avi"], tmp_path / "o")
