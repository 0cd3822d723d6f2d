"""Training on a tiny generated frame dataset: the loss falls, outputs appear, seeds reproduce, NaN stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from c3dnet.engine import NonFiniteLossError, load_config, train
from c3dnet.engine.checkpoint import load_state
from c3dnet.weights import load_model, read_metadata
from tests.engine_helpers import make_frame_dataset, tiny_train_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_frame_dataset(tmp_path_factory.mktemp("engine") / "data")


def _train_losses(work_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_short_run_lowers_loss_and_writes_everything(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config("optim.epochs=6", "train.plots=true", "train.tensorboard=true")
    result = train(cfg, dataset, work_dir=tmp_path, device="cpu")
    assert result.iterations == 6 * 4  # 18 videos in batches of 4, last partial batch dropped
    losses = _train_losses(tmp_path)
    assert len(losses) == 24
    assert sum(losses[-8:]) / 8 < sum(losses[:4]) / 4 - 0.1  # starts near ln(3) = 1.10
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "last.safetensors", "best.safetensors",
                 "last.state.pt"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    assert load_config(tmp_path / "config.yaml") == cfg
    model = load_model(tmp_path / "last.safetensors")
    assert model.class_names == ["class0", "class1", "class2"]
    assert model.preprocess == cfg.preprocess_record()
    assert torch.equal(model.head.weight, result.model.head.weight)
    meta = read_metadata(tmp_path / "best.safetensors")
    assert meta["extra"]["val"]["top1"] == result.best_top1
    assert meta["extra"]["epoch"] == result.best_epoch
    state = load_state(tmp_path / "last.state.pt")
    assert state["iteration"] == 24 and state["best_top1"] == result.best_top1


@pytest.mark.slow
def test_same_seed_same_weights_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    # Two epochs, so persistent workers must see the second epoch's augmentation too.
    overrides = ("optim.epochs=2", "train.val_every=0", "train.checkpoint_every=0")
    a = train(tiny_train_config(*overrides), dataset, work_dir=tmp_path / "a", device="cpu").model.state_dict()
    b = train(tiny_train_config(*overrides, "data.workers=2"), dataset, work_dir=tmp_path / "b",
              device="cpu").model.state_dict()
    c = train(tiny_train_config(*overrides, "train.seed=7"), dataset, work_dir=tmp_path / "c",
              device="cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset: Path, tmp_path: Path) -> None:
    blow_up = ("optim.lr=100", "optim.head_lr_mult=1000", "optim.clip_grad_norm=null", "optim.warmup_iters=0",
               "train.val_every=0")
    cfg = tiny_train_config(*blow_up, "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf).*last\.state\.pt.*--resume") as info:
        train(cfg, dataset, work_dir=tmp_path, device="cpu")
    state = load_state(tmp_path / "last.state.pt")
    assert 1 <= state["iteration"] < 12
    assert f"iteration {state['iteration']}" in str(info.value)  # the failing step was never taken
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # With no checkpoint on disk yet, the message names none.
    with pytest.raises(NonFiniteLossError, match=r"No checkpoint was written yet in .*fresh: start again") as info:
        train(tiny_train_config(*blow_up, "train.checkpoint_every=0"), dataset, work_dir=tmp_path / "fresh",
              device="cpu")
    assert "last.state.pt" not in str(info.value) and not (tmp_path / "fresh" / "last.state.pt").exists()


def test_checkpoints_are_snapshots_and_a_failed_write_stops_the_run(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    from c3dnet.engine import checkpoint

    live = {"w": torch.zeros(3), "groups": [{"m": torch.ones(2)}], "lr": 0.1}
    snap = checkpoint.host_copy(live)
    live["w"] += 1
    live["groups"][0]["m"].zero_()
    assert snap["w"].tolist() == [0, 0, 0] and snap["groups"][0]["m"].tolist() == [1, 1] and snap["lr"] == 0.1

    # Checkpoints are written on a thread: a full disk there must still stop training with its own error,
    # leaving the last checkpoint that was written whole.
    save_state, calls = checkpoint.save_state, []

    def full_disk_on_second(path, state):
        calls.append(state["iteration"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        save_state(path, state)

    monkeypatch.setattr(checkpoint, "save_state", full_disk_on_second)
    cfg = tiny_train_config("train.checkpoint_every=0", "train.val_every=0")
    with pytest.raises(OSError, match="No space left"):
        train(cfg, dataset, work_dir=tmp_path, device="cpu")
    assert load_state(tmp_path / "last.state.pt")["iteration"] == calls[0]


def test_a_work_dir_with_an_earlier_run_needs_overwrite(dataset: Path, tmp_path: Path) -> None:
    """A second run into the same work dir would mix two runs' files (an old best.safetensors beside a new last):
    it is refused, and --overwrite deletes the earlier run's own files and nothing else."""
    from c3dnet.errors import ConfigError

    cfg = tiny_train_config("optim.epochs=1", "train.val_every=1")
    train(cfg, dataset, work_dir=tmp_path, device="cpu")
    (tmp_path / "notes.txt").write_text("mine")
    assert (tmp_path / "best.safetensors").is_file()
    with pytest.raises(ConfigError, match=r"holds an earlier run \(config\.yaml, last\.state\.pt, .*--overwrite"):
        train(cfg.with_overrides(["train.val_every=0"]), dataset, work_dir=tmp_path, device="cpu")
    train(cfg.with_overrides(["train.val_every=0"]), dataset, work_dir=tmp_path, device="cpu", overwrite=True)
    assert not (tmp_path / "best.safetensors").exists()  # the earlier run's best is gone, not left beside the new last
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "notes.txt").read_text() == "mine"


def test_fine_tuning_takes_the_weights_architecture_or_names_the_contradiction(dataset: Path, tmp_path: Path) -> None:
    """A model field the recipe leaves to its default comes from the weights (and config.yaml says so); one it
    sets and the weights contradict is an error naming both values (it used to train the weights' architecture
    silently while config.yaml recorded the recipe's)."""
    import yaml

    from c3dnet.errors import ConfigError
    from c3dnet.model import C3D
    from c3dnet.weights import save_model
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    pretrained = C3D(tiny_config(num_classes=7, temporal_depths=(1, 1, 1, 1, 1)))  # the 2D twin, 7 classes
    save_model(pretrained, tmp_path / "w.safetensors")
    recipe = tiny_train_config("optim.epochs=1", "train.val_every=0").to_dict()
    recipe["model"] = {"clip_len": 8, "crop_size": 32}  # (agreeing); variant, widths: nothing
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = train(tmp_path / "r.yaml", dataset, weights=tmp_path / "w.safetensors", work_dir=tmp_path / "ft",
                   device="cpu")
    written = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["model"]
    assert written["variant"] == "d1" and (written["width_mult"], written["fc_dim"]) == (0.125, 32)
    assert result.model.config.temporal_depths == (1, 1, 1, 1, 1) and result.model.num_classes == 3
    assert result.model.config.dropout == written["dropout"] == 0.5  # the recipe's dropout (the default here)
    with pytest.raises(ConfigError, match=r"model\.variant is 'd3' in the recipe but 'd1' in the weights"):
        train(tmp_path / "r.yaml", dataset, weights=tmp_path / "w.safetensors", work_dir=tmp_path / "x",
              device="cpu", overrides=["model.variant=d3"])
    recipe["model"] = {"clip_len": 8, "crop_size": 32, "fc_dim": 64}
    (tmp_path / "r64.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"model\.fc_dim is 64 in the recipe but 32 in the weights"):
        train(tmp_path / "r64.yaml", dataset, weights=tmp_path / "w.safetensors", work_dir=tmp_path / "y",
              device="cpu")
