"""`c3d test`: the JSON contract, the report files, and clear errors."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.model import C3D
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.engine_helpers import tiny_test_setup, tiny_train_config

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_test_setup(tmp_path_factory.mktemp("testcmd"), 5, NAMES)


def _json(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_json_and_reports(setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, weights = setup
    base = ["test", "--weights", str(weights), "--data", str(data), "--workers", "0", "--device", "cpu", "--json"]
    score = _json(capsys, [*base, "--out", str(tmp_path / "score")])
    assert set(score) == {"top1", "top5", "mean_class_accuracy", "clip_top1", "num_videos", "clips_per_video"}
    assert score["num_videos"] == 6 and score["clips_per_video"] == 10
    assert score["top5"] == 1.0  # 3 classes: k is capped at the class count, so every label is in the top 5
    # top-1 and clip top-1 against the model run by hand on the same clips
    from c3dnet.data.dataset import ClipDataset
    from c3dnet.data.sources import load_source
    from c3dnet.data.transforms import normalize
    from c3dnet.weights import load_model

    model, source = load_model(weights).eval(), load_source(data, "test")
    dataset = ClipDataset(source.records, "test", model.preprocess, num_clips=10)
    with torch.inference_mode():
        logits = np.stack([model(normalize(dataset[i][0], model.preprocess)).numpy() for i in range(6)])  # (V, K, C)
    labels = np.array([r.label for r in source.records])
    assert score["top1"] == pytest.approx(float((logits.mean(1).argmax(1) == labels).mean()))
    assert score["clip_top1"] == pytest.approx(float((logits.argmax(2) == labels[:, None]).mean()))

    out = tmp_path / "score"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 6
    assert score["top1"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / 6)
    per_class = list(csv.DictReader((out / "per_class_accuracy.csv").open()))
    assert [r["name"] for r in per_class] == NAMES and all(r["videos"] == "2" for r in per_class)
    recalls = [float(r["accuracy"]) for r in per_class]
    assert score["mean_class_accuracy"] == pytest.approx(sum(recalls) / 3)
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["average"] == "score"

    prob = _json(capsys, [*base, "--average", "prob", "--clips", "4", "--out", str(tmp_path / "prob")])
    assert prob["clips_per_video"] == 4 and prob["num_videos"] == 6


def test_compile_gives_the_eager_predictions(setup: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data, weights = setup
    monkeypatch.setattr(logging.getLogger("c3dnet"), "propagate", True)
    base = ["test", "--weights", str(weights), "--data", str(data), "--workers", "0", "--device", "cpu", "--json",
            "--batch-size", "4"]  # 6 videos: a batch of 4 then one of 2, padded to 4 by the compiled model
    eager = _json(capsys, [*base, "--out", str(tmp_path / "eager")])
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        compiled = _json(capsys, [*base, "--compile", "--out", str(tmp_path / "compiled")])
    assert "torch.compile failed" not in caplog.text  # compiled, not the eager fallback
    assert compiled == eager
    rows = {name: list(csv.DictReader((tmp_path / name / "predictions.csv").open())) for name in ("eager", "compiled")}
    assert [(r["video"], r["pred"], r["top5"]) for r in rows["compiled"]] == \
        [(r["video"], r["pred"], r["top5"]) for r in rows["eager"]]
    assert [float(r["pred_score"]) for r in rows["compiled"]] == \
        pytest.approx([float(r["pred_score"]) for r in rows["eager"]], abs=1e-4)


def test_class_count_mismatch_is_a_clear_error(setup: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = setup
    save_model(C3D(tiny_config(num_classes=5)), tmp_path / "five.safetensors")
    code = main(["test", "--weights", str(tmp_path / "five.safetensors"), "--data", str(data), "--workers", "0",
                 "--device", "cpu"])
    assert code == 2
    assert "3 classes, but" in capsys.readouterr().err


def test_train_command_prints_summary(setup: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = setup
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_train_config("data.batch_size=3", "optim.epochs=1").to_yaml())
    base = ["train", "--config", str(config), "--data", str(data), "--device", "cpu", "--set", "train.val_every=1"]
    summary = _json(capsys, [*base, "--work-dir", str(tmp_path / "w"), "--json"])
    assert summary["iterations"] == 1 and summary["epochs"] == 1
    assert Path(summary["last"]).is_file() and Path(summary["best"]).is_file()
    assert main([*base, "--work-dir", str(tmp_path / "w2"), "--no-progress"]) == 0  # without --json: one plain line
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("trained 1 epochs (1 iterations), last epoch's mean loss ") and "w2/last.safetensors" in line
    bad = main(["train", "--config", str(config), "--data", str(data), "--set", "optim.lr=fast"])
    assert bad == 2 and "optim.lr must be a number" in capsys.readouterr().err
