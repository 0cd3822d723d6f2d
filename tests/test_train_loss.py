"""'Loss' means one thing per place: the epoch line, the "epoch" records and `final_loss` are the epoch's mean over
all its clips; the "train" records and the progress bar are means over `train.log_every` iterations. Checked
against sums done by hand from the per-iteration records, with a last batch of a different size so that a mean
of batch means, or the last batch's loss, would show."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from c3dnet.cli import main
from tests.engine_helpers import make_frame_dataset, tiny_train_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_frame_dataset(tmp_path_factory.mktemp("loss") / "data")  # 3 classes x 6 = 18 training videos


def _records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def test_epoch_loss_is_the_mean_over_the_epochs_clips(dataset: Path, tmp_path: Path, capsys) -> None:
    # 18 videos in batches of 4, the last partial batch kept: 4, 4, 4, 4 and 2 clips an epoch.
    cfg = tiny_train_config("optim.epochs=2", "data.drop_last=false", "train.log_every=1", "train.val_every=0")
    (tmp_path / "r.yaml").write_text(cfg.to_yaml())
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--data", str(dataset), "--work-dir",
                 str(tmp_path / "w"), "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    records = _records(tmp_path / "w")
    for epoch in (1, 2):
        steps = [r for r in records if r["kind"] == "train" and r["epoch"] == epoch]
        assert [r["clips"] for r in steps] == [4, 4, 4, 4, 2]
        by_hand = sum(r["loss"] * r["clips"] for r in steps) / 18
        (record,) = [r for r in records if r["kind"] == "epoch" and r["epoch"] == epoch]
        assert record["clips"] == 18 and record["iteration"] == 5 * epoch
        assert record["loss"] == pytest.approx(by_hand, rel=1e-12)
        assert record["top1"] == pytest.approx(sum(r["top1"] * r["clips"] for r in steps) / 18, rel=1e-12)
        # Neither the last batch's loss (what the line and final_loss were) nor a mean of the batch means.
        assert abs(by_hand - steps[-1]["loss"]) > 1e-4
        assert abs(by_hand - sum(r["loss"] for r in steps) / 5) > 1e-5
        line = re.search(rf"epoch {epoch}/2: mean loss (\S+) over its 18 clips", err)
        assert line is not None and float(line.group(1)) == pytest.approx(by_hand, abs=5e-5)
    assert summary["final_loss"] == record["loss"]  # the last epoch's mean


def test_the_resume_message_counts_epochs_from_1(dataset: Path, tmp_path: Path, capsys) -> None:
    """It said "at epoch 1" before the line "epoch 2/2: ..." (epochs counted from 0, then from 1)."""
    cfg = tiny_train_config("optim.epochs=1", "train.val_every=0")
    (tmp_path / "r.yaml").write_text(cfg.to_yaml())
    common = ["train", "--config", str(tmp_path / "r.yaml"), "--data", str(dataset), "--work-dir", str(tmp_path / "w"),
              "--device", "cpu"]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--resume", "--set", "optim.epochs=2"]) == 0
    err = capsys.readouterr().err
    state = tmp_path / "w" / "last.state.pt"
    assert f"resumed from {state} at the start of epoch 2/2 (iteration 4 of 8)" in err
    assert err.index("resumed from") < err.index("epoch 2/2: mean loss") and "epoch 1/2" not in err
    assert main([*common, "--resume", "--set", "optim.epochs=2"]) == 0
    assert f"resumed from {state} after its last epoch (2/2): nothing is left to train (iteration 8 of 8)" in \
        capsys.readouterr().err
