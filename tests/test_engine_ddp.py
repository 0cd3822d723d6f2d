"""Under torchrun (two gloo processes on the CPU): testing counts every video once and matches one process;
DDP training with 2 x 2 clips per step matches one process with 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from c3dnet.model import C3D
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.engine_helpers import make_frame_dataset, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], nproc: int) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "c3dnet.cli", *args]
    else:
        cmd = [sys.executable, "-m", "c3dnet.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 classes x 3 test videos = 9: two ranks get 5 each, the padding repeats video 0
    return make_frame_dataset(tmp_path_factory.mktemp("ddp") / "data", train_per_class=4, test_per_class=3)


@pytest.mark.slow
def test_two_processes_test_like_one(dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = C3D(tiny_config(num_classes=3), class_names=["class0", "class1", "class2"])
    model.preprocess = tiny_train_config().preprocess_record()
    weights = tmp_path / "tiny.safetensors"
    save_model(model, weights)
    common = ["test", "--weights", str(weights), "--data", str(dataset), "--workers", "0", "--device", "cpu",
              "--json", "--batch-size", "2", "--clips", "3"]
    one = json.loads(_run([*common, "--out", str(tmp_path / "one")], 1).strip().splitlines()[-1])
    two = json.loads(_run([*common, "--out", str(tmp_path / "two")], 2).strip().splitlines()[-1])
    assert one["num_videos"] == two["num_videos"] == 9 and one["clips_per_video"] == 3
    for key in ("top1", "top5", "mean_class_accuracy", "clip_top1"):
        assert two[key] == pytest.approx(one[key], abs=1e-9), key
    preds_one = (tmp_path / "one" / "predictions.csv").read_text().splitlines()
    preds_two = (tmp_path / "two" / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[:6] for r in preds_one] == [r.split(",")[:6] for r in preds_two]
    scores_one = [float(r.split(",")[6]) for r in preds_one[1:]]
    assert [float(r.split(",")[6]) for r in preds_two[1:]] == pytest.approx(scores_one, abs=1e-5)
    assert len(preds_two) == 1 + 9


@pytest.mark.slow
def test_ddp_training_matches_one_process(dataset: Path, tmp_path: Path) -> None:
    # Two ranks x 2 clips see exactly the 4 clips one process sees per step (rank r takes every 2nd sampled
    # index); with dropout off, DDP's averaged gradient equals the single process's up to summation order.
    cfg = tiny_train_config("optim.epochs=2", "data.batch_size=2", "model.dropout=0.0", "train.val_every=1")
    single = tiny_train_config("optim.epochs=2", "data.batch_size=4", "model.dropout=0.0", "train.val_every=1")
    (tmp_path / "ddp.yaml").write_text(cfg.to_yaml())
    (tmp_path / "single.yaml").write_text(single.to_yaml())
    out_two = _run(["train", "--config", str(tmp_path / "ddp.yaml"), "--data", str(dataset), "--work-dir",
                    str(tmp_path / "two"), "--device", "cpu", "--json"], 2)
    out_one = _run(["train", "--config", str(tmp_path / "single.yaml"), "--data", str(dataset), "--work-dir",
                    str(tmp_path / "one"), "--device", "cpu", "--json"], 1)
    two, one = json.loads(out_two.strip().splitlines()[-1]), json.loads(out_one.strip().splitlines()[-1])
    assert two["iterations"] == one["iterations"] == 6  # 12 videos, 4 per step
    a, b = load_file(tmp_path / "two" / "last.safetensors"), load_file(tmp_path / "one" / "last.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert two["best_val_top1"] == one["best_val_top1"]

    # The epoch's mean loss is over every clip of every process: the same whatever the world size.
    def epochs(run: str) -> list[dict]:
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["kind"] == "epoch"]

    assert [r["clips"] for r in epochs("two")] == [r["clips"] for r in epochs("one")] == [12, 12]
    assert [r["loss"] for r in epochs("two")] == pytest.approx([r["loss"] for r in epochs("one")], rel=1e-5)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5) and two["final_loss"] == \
        epochs("two")[-1]["loss"]
