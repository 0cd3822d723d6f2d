"""Exact resume: a `c3d train` killed with SIGKILL during its second epoch, then resumed, ends with the same
weights (and the same metrics log) as a run that was never interrupted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from c3dnet.engine import train
from c3dnet.engine.checkpoint import load_state
from tests import killpoint
from tests.engine_helpers import make_frame_dataset, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
# 3 epochs x 4 iterations, a checkpoint every 2; dropout on so the torch RNG state matters.
OVERRIDES = ("optim.epochs=3", "train.checkpoint_every=2", "model.dropout=0.5")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _kill_in_second_epoch(config: Path, data: Path, work_dir: Path) -> int:
    """Run `c3d train` and SIGKILL it right after its mid-epoch-2 checkpoint (iteration 6 of 4 per epoch) is
    written: the checkpoint writer stops there, so the kill point is exact, not a matter of polling."""
    args = ["train", "--config", config, "--data", data, "--work-dir", work_dir, "--device", "cpu"]
    marker = work_dir.parent / "killed.marker"
    proc = killpoint.start(args, "c3dnet.engine.checkpoint:save_state", "args[1]['iteration'] >= 6", marker, _env())
    killpoint.kill_at_marker(proc, marker)
    return load_state(work_dir / "last.state.pt")["iteration"]


@pytest.mark.slow
def test_sigkill_in_second_epoch_then_resume_is_exact(tmp_path: Path) -> None:
    data = make_frame_dataset(tmp_path / "data")
    cfg = tiny_train_config(*OVERRIDES)
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())

    killed_at = _kill_in_second_epoch(config, data, tmp_path / "resumed")
    assert killed_at == 6  # the mid-epoch-2 checkpoint is the last on disk
    resumed = train(config, data, work_dir=tmp_path / "resumed", resume=True, device="cpu")
    straight = train(config, data, work_dir=tmp_path / "straight", device="cpu")

    assert resumed.iterations == straight.iterations == 12
    a = load_file(tmp_path / "resumed" / "last.safetensors")
    b = load_file(tmp_path / "straight" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.best_top1 == straight.best_top1

    def records(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("clips_per_s", "data_wait")} for line in lines]

    assert records("resumed") == records("straight")  # no duplicated or missing iterations, same losses
    # Epoch 2 was cut at iteration 6: its mean still covers all 4 of its iterations (the sums are in the state).
    epochs = [r for r in records("resumed") if r["kind"] == "epoch"]
    assert [(r["epoch"], r["clips"]) for r in epochs] == [(1, 16), (2, 16), (3, 16)]
    assert resumed.final_loss == straight.final_loss == epochs[-1]["loss"]


def test_resume_without_state_is_a_clear_error(tmp_path: Path) -> None:
    from c3dnet.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume given but last.state.pt is missing"):
        train(tiny_train_config(), tmp_path / "data", work_dir=tmp_path / "empty", resume=True, device="cpu")
