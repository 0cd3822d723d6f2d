"""`--splits DIR` names a split folder kept apart from the data, the same way in every command that reads one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from c3dnet.cli import main
from c3dnet.data.synthetic import SynthParams, generate_synthetic
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config


def test_test_command_reads_splits_from_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = SynthParams(num_pairs=1, videos_per_class=4, groups=2, test_groups=1, frames=25, height=32, width=32)
    data = generate_synthetic(tmp_path / "data", params, workers=1)
    splits = tmp_path / "my_splits"
    shutil.move(str(data / "ucfTrainTestlist"), splits)
    model = C3D(tiny_config(num_classes=2, clip_len=8, crop_size=32),
                Preprocess(short_side=32, crop_size=32, clip_len=8), ["MoveDown", "MoveUp"])
    weights = tmp_path / "w.safetensors"
    save_model(model, weights)

    args = ["test", "--weights", str(weights), "--data", str(data), "--workers", "0", "--json", "--clips", "2",
            "--out", str(tmp_path / "report")]
    assert main(args + ["--splits", str(splits)]) == 0
    with_splits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert with_splits["num_videos"] == 4  # group g01 of both classes: the official test list
    assert main(args + ["--splits-dir", str(splits)]) == 0  # the older spelling still works
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == with_splits
