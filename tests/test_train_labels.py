"""What training trains on: class counts implied by a list's labels (warned about, bounded before any model is
built, declared with model.num_classes), and data.val_fraction's held-out validation videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c3dnet.cli import main
from c3dnet.data.sources import VideoRecord
from c3dnet.engine.trainset import MAX_IMPLIED_CLASSES, hold_out
from c3dnet.weights import read_metadata
from tests.engine_helpers import make_frame_dataset, tiny_train_config


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_frame_dataset(tmp_path_factory.mktemp("labels") / "data")  # 3 classes x 6 training videos


def _list(tmp_path: Path, frames: Path, labels: list[int]) -> Path:
    """An annotation list without a class file: the first len(labels) training videos, relabelled."""
    lines = (frames / "train_split1.txt").read_text().splitlines()[:len(labels)]
    folder = tmp_path / "lists"
    folder.mkdir(exist_ok=True)
    path = folder / "train.txt"
    path.write_text("# frame_dir frames label\n" + "".join(
        f"{frames / line.split()[0]} {line.split()[1]} {label}\n" for line, label in zip(lines, labels)))
    return path


def _train(tmp_path: Path, data: Path, *overrides: str, work: str = "w") -> int:
    cfg = tiny_train_config("optim.epochs=1", "train.val_every=0", "data.batch_size=2", *overrides)
    (tmp_path / "r.yaml").write_text(cfg.to_yaml())
    return main(["train", "--config", str(tmp_path / "r.yaml"), "--data", str(data), "--work-dir",
                 str(tmp_path / work), "--device", "cpu"])


def test_a_stray_label_is_refused_before_the_model_is_built(frames: Path, tmp_path: Path, capsys) -> None:
    """Label 1,000,000 without a class file asked for a 1,000,001-class head (4 GB at fc 4096)."""
    data = _list(tmp_path, frames, [0, 1, 2, 1_000_000, 1])
    assert _train(tmp_path, data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"c3d train: error: {data}:5: label 1000000 implies 1,000,001 classes for 5 labelled videos (the "
                   "list has no class file, so the class count is the largest label + 1); labels are 0-based class "
                   "indices: fix the label, put a classes.txt (one name per line) beside the list, or set "
                   f"model.num_classes=1000001 if you mean it (at most {MAX_IMPLIED_CLASSES:,} without it)"]
    assert not (tmp_path / "w" / "config.yaml").exists()  # written once the model is built: it never was


def test_more_classes_than_videos_warns_and_trains(frames: Path, tmp_path: Path, capsys) -> None:
    data = _list(tmp_path, frames, [0, 1, 2, 0, 7, 1])
    assert _train(tmp_path, data) == 0
    err = capsys.readouterr().err
    assert f"WARNING {data}:6: label 7 implies 8 classes, more than the 6 labelled videos" in err
    assert read_metadata(tmp_path / "w" / "last.safetensors")["config"]["num_classes"] == 8


def test_model_num_classes_declares_the_count(frames: Path, tmp_path: Path, capsys) -> None:
    data = _list(tmp_path, frames, [0, 1, 2, MAX_IMPLIED_CLASSES + 5, 1, 0])
    assert _train(tmp_path, data, f"model.num_classes={MAX_IMPLIED_CLASSES + 6}") == 0
    assert "WARNING" not in capsys.readouterr().err  # declared: no warning either
    meta = read_metadata(tmp_path / "w" / "last.safetensors")
    assert meta["config"]["num_classes"] == MAX_IMPLIED_CLASSES + 6 and len(meta["class_names"]) == 10_006
    assert _train(tmp_path, data, "model.num_classes=5", work="small") == 2
    assert capsys.readouterr().err.strip() == (
        f"c3d train: error: {data}:5: label {MAX_IMPLIED_CLASSES + 5} is out of range for model.num_classes=5 "
        "(labels are 0-based); fix the label or raise model.num_classes")
    # With a class list (classes.txt beside the prepared list), the count is the list's.
    assert _train(tmp_path, frames, "model.num_classes=4", work="listed") == 2
    assert capsys.readouterr().err.strip() == (
        f"c3d train: error: {frames}: model.num_classes is 4 but the dataset's class list has 3 classes; remove "
        "model.num_classes (it is for lists without a class file) or fix the class list")


def _records(n_per_class: dict[int, int]) -> list[VideoRecord]:
    return [VideoRecord(Path(f"/data/c{c}/v{v}"), c, 10) for c, n in n_per_class.items() for v in range(n)]


def test_hold_out_is_stratified_deterministic_and_disjoint() -> None:
    records = _records({0: 10, 1: 4, 2: 1, 3: 2})
    train, val = hold_out(records, 0.25, Path("/data"))
    # Per class: round(0.25 n), at least 1, never the whole class: 10 -> 2 (2.5 rounds to even), 4 -> 1, 1 -> 0,
    # 2 -> 1.
    assert sorted(r.label for r in val) == [0, 0, 1, 3]
    assert {r.path for r in train} | {r.path for r in val} == {r.path for r in records}
    assert not {r.path for r in train} & {r.path for r in val}
    # The list's order, the machine's root: neither changes the choice (paths relative to the root are hashed).
    _, val_reversed = hold_out(records[::-1], 0.25, Path("/data"))
    assert {r.path for r in val_reversed} == {r.path for r in val}
    moved = [VideoRecord(Path("/mnt/other") / r.path.relative_to("/data"), r.label, 10) for r in records]
    _, val_moved = hold_out(moved, 0.25, Path("/mnt/other"))
    assert {r.path.relative_to("/mnt/other") for r in val_moved} == {r.path.relative_to("/data") for r in val}
    # The held-out videos of class 0 are the two with the smallest SHA-256 of their relative path.
    import hashlib

    by_hash = sorted(range(10), key=lambda v: hashlib.sha256(f"c0/v{v}".encode()).hexdigest())[:2]
    assert sorted(r.path.name for r in val if r.label == 0) == sorted(f"v{v}" for v in by_hash)
    assert hold_out(records, 0.0, Path("/data")) == (records, [])


def test_val_fraction_videos_are_never_trained_on(frames: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Every clip the training loader reads, and every one validation reads, is recorded by video: the held-out
    videos are read in "val" mode only, and best.safetensors says which set chose it."""
    from c3dnet.data import dataset

    seen: dict[str, set[str]] = {"train": set(), "val": set()}
    real = dataset.ClipDataset.__getitem__

    def recording(self, index):
        seen[self.mode].add(str(self.records[index].path))
        return real(self, index)

    monkeypatch.setattr(dataset.ClipDataset, "__getitem__", recording)
    assert _train(tmp_path, frames, "data.val_fraction=0.34", "train.val_every=1", "optim.epochs=2") == 0
    err = capsys.readouterr().err
    train_list = [line.split()[0] for line in (frames / "train_split1.txt").read_text().splitlines()]
    held = {str(frames / rel) for rel in train_list} - seen["train"]
    assert seen["val"] == held and len(held) == 6  # round(0.34 x 6) = 2 of each of the 3 classes
    assert len(seen["train"]) == 12 and not seen["train"] & seen["val"]
    assert "holding out 6 of 18 training videos for validation (data.val_fraction=0.34, per class)" in err
    assert "epoch 2 validation on 6 held-out training videos (data.val_fraction=0.34)" in err
    meta = read_metadata(tmp_path / "w" / "best.safetensors")
    assert meta["extra"]["val_set"] == "6 held-out training videos (data.val_fraction=0.34)"
    # The same videos on a second run: the split is a function of the paths.
    first = set(held)
    seen["train"].clear()
    seen["val"].clear()
    assert _train(tmp_path, frames, "data.val_fraction=0.34", "train.val_every=1", work="again") == 0
    assert seen["val"] == first
    records = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_videos"] for r in records if r["kind"] == "val"] == [6]


def test_val_fraction_needs_validation(tmp_path: Path) -> None:
    from c3dnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.val_fraction holds out training videos for validation, but "
                                          r"train.val_every is 0"):
        tiny_train_config("data.val_fraction=0.1", "train.val_every=0")
    with pytest.raises(ConfigError, match=r"data.val_fraction must be in \[0, 1\)"):
        tiny_train_config("data.val_fraction=1.0")

