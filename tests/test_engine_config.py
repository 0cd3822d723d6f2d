"""Typed configs: the shipped recipes, overrides with type checks, and errors that name key and file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from c3dnet.engine.config import TrainConfig, load_config
from c3dnet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_seed_recipe_is_exact() -> None:
    cfg = load_config(ROOT / "configs" / "c3d_ucf101_seed.yaml")
    o = cfg.optim
    assert (o.lr, o.momentum, o.weight_decay, o.head_lr_mult, o.clip_grad_norm) == (1e-3, 0.9, 5e-4, 5.0, 40.0)
    assert (o.schedule, o.warmup_iters, o.epochs) == ("cosine", 300, 100)
    assert (cfg.data.batch_size, cfg.train.seed, cfg.train.val_every, cfg.train.average) == (32, 1234, 1, "score")
    p = cfg.preprocess_record()
    assert (p.mean, p.std, p.channel_order, p.short_side, p.crop_size, p.clip_len) == (
        (104.0, 117.0, 128.0), (1.0, 1.0, 1.0), "RGB", 128, 112, 16)
    assert cfg == TrainConfig()  # the defaults are the seed's recipe


def test_mmaction_recipe() -> None:
    cfg = load_config(ROOT / "configs" / "c3d_ucf101_mmaction.yaml")
    assert (cfg.optim.schedule, cfg.optim.milestones, cfg.optim.gamma, cfg.optim.epochs) == ("multistep", [20, 40],
                                                                                               0.1, 45)
    assert (cfg.data.batch_size, cfg.train.average) == (30, "prob")


def test_overrides_are_typed() -> None:
    assert TrainConfig().with_overrides(["optim.lr=1e-2"]).optim.lr == 0.01  # YAML 1.1 reads 1e-2 as a string
    cfg = TrainConfig().with_overrides(["optim.lr=1", "data.batch_size=8", "optim.clip_grad_norm=null",
                                        "optim.milestones=[3, 7]", "train.amp=false", "preprocess.mean=[1, 2, 3]"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 8
    assert cfg.optim.clip_grad_norm is None
    assert cfg.optim.milestones == [3, 7]
    assert cfg.train.amp is False
    assert cfg.preprocess_record().mean == (1.0, 2.0, 3.0)
    assert TrainConfig().optim.lr == 1e-3  # overrides never touch the original


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("optimizer.lr=0.1", "unknown config section 'optimizer'"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("optim.epochs=1.5", "optim.epochs must be an integer"),
        ("train.amp=3", "train.amp must be true or false"),
        ("optim.schedule=step", "optim.schedule must be one of"),
        ("optim.milestones=[5, 3]", "milestones must be increasing"),
        ("model.variant=d4", "model.variant 'd4' is unknown"),
        ("optim.lr", "expected section.key=value"),
        ("lr=0.1", "must be section.key"),
        ("data.batch_size=0", "batch_size"),
        ("data.workers=many", "data.workers must be an integer or 'auto', got 'many'"),
        ("data.workers=-1", "data.workers must be >= 0 or auto"),
        ("optim.clip_grad_norm=big", "optim.clip_grad_norm must be a number or null"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        TrainConfig().with_overrides([override])


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("optim:\n  lr: 0.01\n  warmup: 5\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml.*unknown config key 'optim.warmup'"):
        load_config(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("optim:\n  lr: 0.01\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/recipe.yaml")


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = TrainConfig().with_overrides(["optim.epochs=3", "preprocess.resize_hw=[128, 171]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        # Each of these once passed the validator and then crashed a consumer with a traceback.
        ("optim.momentum=-0.1", "optim.momentum must be >= 0"),  # torch.optim.SGD: ValueError
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),  # likewise
        ("train.seed=-1", "train.seed must be in 0 .. 2**63 - 1"),  # numpy's default_rng: ValueError
        ("train.seed=100000000000000000000000", "train.seed must be in 0 .. 2**63 - 1"),  # torch: overflow
        ("preprocess.short_side=100", "preprocess.short_side (100) must be >= model.crop_size (112)"),  # crop
        ("preprocess.resize_hw=[128]", "preprocess.resize_hw must be [height, width], each >= model.crop_size "
                                       "(112), got [128]"),  # IndexError in a loader worker
        ("preprocess.resize_hw=[100, 171]", "got [100, 171]; fix it or set it to null"),
        ("model.width_mult=.inf", "model.width_mult must be a finite number, got inf"),  # OverflowError
        ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("preprocess.mean=[104, .inf, 128]", "preprocess.mean must be a finite number, got inf"),
    ],
)
def test_values_that_crashed_a_consumer_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig().with_overrides([override])


def test_edge_values_are_accepted() -> None:
    cfg = TrainConfig().with_overrides(["optim.momentum=0", "optim.weight_decay=0", f"train.seed={2**63 - 1}",
                                        "preprocess.short_side=112"])
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.train.seed) == (0.0, 0.0, 2**63 - 1)
    assert TrainConfig().with_overrides(["preprocess.resize_hw=[112, 112]"]).preprocess_record().resize_hw == (112, 112)
    assert TrainConfig().with_overrides(["train.seed=0"]).train.seed == 0


def test_section_defaults_are_the_dataclasses_defaults():
    """A default lives in one place: the config sections' come from C3DConfig and Preprocess."""
    from c3dnet.model import TEMPORAL_DEPTHS, C3DConfig
    from c3dnet.preprocess import Preprocess

    cfg = TrainConfig()
    model = cfg.model_config(101)
    assert model == C3DConfig() and TEMPORAL_DEPTHS[cfg.model.variant] == C3DConfig().temporal_depths
    assert cfg.preprocess_record() == Preprocess()


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1e12", "optim.lr must be <= 100"),
    ("optim.momentum=1", "optim.momentum must be < 1"),
    ("optim.gamma=0", "optim.gamma must be in (0, 1]"),
    ("optim.milestones=[5,500]", "optim.milestones must be epochs in 1 .. optim.epochs"),
    ("model.fc_dim=2000000", "model.fc_dim must be in 1 .. 65536"),
    ("model.width_mult=10000", "model.width_mult must be in (0, 16]"),
    ("data.batch_size=10000000", "data.batch_size must be <= 65536"),
    ("preprocess.std=[1,0,1]", "preprocess.std values must be in (0, 255]"),
    ("data.split=0", "data.split must be in 1 .. 100"),
])
def test_every_numeric_field_is_bounded(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])
