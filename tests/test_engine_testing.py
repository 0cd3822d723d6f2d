"""`engine.testing.test_weights`: the one test pipeline behind `c3d test`, the demo, `c3d lite` and bench_e2e."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import build_parser
from c3dnet.data.dataset import ClipDataset
from c3dnet.data.sources import Source, VideoRecord, load_source
from c3dnet.engine import testing
from c3dnet.engine.evaluate import evaluate
from c3dnet.errors import ConfigError, DataError
from c3dnet.inference.runner import ClipRunner
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import load_model, save_model
from tests.conftest import tiny_config
from tests.engine_helpers import make_frame_dataset, tiny_test_setup, tiny_train_config

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_test_setup(tmp_path_factory.mktemp("testing"), 7, NAMES)


def test_scores_are_those_of_the_dataset_and_evaluate_by_hand(setup: tuple[Path, Path]) -> None:
    data, weights = setup
    run = testing.test_weights(weights, data, testing.TestOptions(device="cpu", workers=0, clips=4))
    source = load_source(data, "test")
    model = load_model(weights).eval()
    loader = torch.utils.data.DataLoader(ClipDataset(source.records, "test", model.preprocess, num_clips=4),
                                         batch_size=3)
    expected = evaluate(ClipRunner(model, "logits"), loader)
    np.testing.assert_allclose(run.result.scores, expected.scores, rtol=1e-5, atol=1e-5)
    assert run.result.metrics() == pytest.approx(expected.metrics())
    assert run.result.clips_per_video == 4 and run.result.num_videos == 6
    assert run.class_names == NAMES and run.videos == [r.path for r in source.records]
    assert run.device == torch.device("cpu") and run.is_main and run.seconds > 0 and 0 <= run.data_wait <= 1
    assert run.backend.num_classes == 3 and not run.backend.model.training


def test_workers_auto_and_a_given_model_and_source(setup: tuple[Path, Path]) -> None:
    """"auto" (the config's default) resolves as training resolves it: one loader process on the CPU."""
    data, weights = setup
    model, source = load_model(weights), load_source(data, "test")
    zero = testing.test_weights(model, source, testing.TestOptions(device="cpu", workers=0))
    auto = testing.test_weights(model, source, testing.TestOptions(device="cpu", workers="auto"))
    np.testing.assert_array_equal(auto.result.scores, zero.result.scores)
    assert auto.backend.model is model and auto.result.clips_per_video == 10


def test_options_from_a_training_config() -> None:
    cfg = tiny_train_config("data.split=2", "data.num_clips=3", "data.val_batch_size=5", "data.workers=auto",
                            "train.average=prob", "train.amp=false", "train.channels_last=false",
                            "data.skip_bad=true", "data.splits_dir=lists", "data.autorotate=false",
                            "data.fps=30000/1001", "data.source_fps=25")
    options = testing.TestOptions.from_config(cfg, device="cpu", progress=True)
    assert dataclasses.asdict(options) == {
        "split": 2, "splits_dir": "lists", "clips": 3, "average": "prob", "batch_size": 5, "workers": "auto",
        "device": "cpu", "amp": False, "precision": "auto", "channels_last": False, "compile": False, "skip_bad": True,
        "autorotate": False, "progress": True, "fps": Fraction(30000, 1001), "source_fps": Fraction(25),
    }
    assert testing.TestOptions() == testing.TestOptions(split=1, clips=10, average="score", workers=None)


@pytest.mark.parametrize("bad", [dict(clips=0), dict(batch_size=0), dict(workers=-1), dict(workers="many"),
                                 dict(average="mean")])
def test_bad_options_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError, match=f"test options: {next(iter(bad))} must be"):
        testing.TestOptions(**bad)


def test_class_count_mismatch_names_both(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = setup
    with pytest.raises(DataError, match=r"data: 3 classes, but the model predicts 5; test on the dataset"):
        testing.test_weights(C3D(tiny_config(num_classes=5)), data, testing.TestOptions(device="cpu"))
    save_model(C3D(tiny_config(num_classes=5)), tmp_path / "five.safetensors")
    with pytest.raises(DataError, match=f"3 classes, but {tmp_path / 'five.safetensors'} predicts 5"):
        testing.test_weights(tmp_path / "five.safetensors", data, testing.TestOptions(device="cpu"))


@pytest.mark.parametrize("extra", [
    ["preprocess.short_side=32"],  # the crop exactly fills the short side
    ["preprocess.resize_hw=[32, 32]"],  # the crop is the whole frame
])
def test_edge_values_the_validator_accepts_run_through_train_and_test(tmp_path: Path, extra: list[str]) -> None:
    """A config value the validator accepts never crashes a consumer: the values at its edges, and the
    defaults "auto" (workers) and validation each epoch, through training and the test pipeline."""
    from c3dnet.engine.train import train

    data = make_frame_dataset(tmp_path / "data", train_per_class=2, test_per_class=1, num_frames=12)
    cfg = tiny_train_config("optim.epochs=1", "optim.momentum=0", "optim.weight_decay=0", f"train.seed={2**63 - 1}",
                            "data.workers=auto", "data.batch_size=3", "train.val_every=1", *extra)
    trained = train(cfg, data, work_dir=tmp_path / "work", device="cpu")
    assert trained.iterations == 2 and np.isfinite(trained.final_loss) and trained.last_val["num_videos"] == 3
    run = testing.test_weights(trained.last_path, data, testing.TestOptions.from_config(cfg, device="cpu"))
    assert run.result.num_videos == 3 and run.result.clips_per_video == 10
    assert run.backend.preprocess == cfg.preprocess_record()


def test_autorotate_reaches_the_test_clips() -> None:
    """A video with a 90-degree display matrix (FFmpeg's corpus file): turned by default, coded orientation with
    autorotate=False, exactly as the dataset gives it either way; `c3d test --no-autorotate` sets it."""
    from tests.oracle import CORPUS_BY_NAME, corpus_path

    video = corpus_path(CORPUS_BY_NAME["rot90_mp4"])
    source = Source([VideoRecord(video, 0)], ["a", "b"], video.parent, "list")
    model = C3D(tiny_config(num_classes=2), Preprocess(std=(60.0,) * 3, short_side=36, crop_size=32, clip_len=8))
    for p in model.head.parameters():  # a head large enough that the two orientations score apart
        torch.nn.init.normal_(p, 0.0, 1.0)
    runs = {rotate: testing.test_weights(model, source, testing.TestOptions(device="cpu", workers=0,
                                                                            autorotate=rotate))
            for rotate in (True, False)}
    for rotate, run in runs.items():
        dataset = ClipDataset(source.records, "test", model.preprocess, num_clips=10, autorotate=rotate)
        expected = evaluate(ClipRunner(model, "logits"), torch.utils.data.DataLoader(dataset, batch_size=1))
        np.testing.assert_allclose(run.result.scores, expected.scores, rtol=1e-5, atol=1e-5)
    assert np.abs(runs[True].result.scores - runs[False].result.scores).max() > 1e-3
    args = build_parser().parse_args(["test", "--weights", "w", "--data", "d", "--no-autorotate"])
    assert args.autorotate is False and build_parser().parse_args(["test", "--weights", "w", "--data", "d"]).autorotate
