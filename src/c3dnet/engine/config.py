"""Training configs: YAML files loaded into typed dataclasses, with `--set key.sub=value` overrides.

A config has five sections: `model` (architecture), `preprocess` (how frames become input), `data` (loading),
`optim` (optimiser and learning-rate schedule) and `train` (seed, validation, checkpoints, GPU options).
Every key is checked: an unknown section or field, or a value of the wrong type, raises `ConfigError` naming
the key and the file (or the `--set` override) it came from. A missing key keeps its default.

Example:
    >>> from c3dnet.engine.config import TrainConfig, load_config
    >>> cfg = load_config("seed", overrides=["optim.lr=0.01"])    # a packaged recipe's name, or a YAML path
    >>> cfg = TrainConfig().with_overrides(["data.batch_size=8", "optim.schedule=multistep"])
    >>> cfg.data.batch_size, cfg.optim.schedule
    (8, 'multistep')
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml

from c3dnet.errors import ConfigError
from c3dnet.model import TEMPORAL_DEPTHS, C3DConfig
from c3dnet.preprocess import Preprocess

_MODEL, _PRE = C3DConfig(), Preprocess()  # each default lives in its dataclass; the sections take them from there


@dataclass
class ModelSection:
    """Architecture (see `C3DConfig`); `variant` names the temporal depths: d1, d3, d5, d7, increasing, ...

    `num_classes` is for annotation lists without a class file, whose class count is otherwise the largest label
    + 1: it declares the count (every label must be below it), and lifts the bound on implied counts
    (`c3dnet.engine.trainset.MAX_IMPLIED_CLASSES`). With a class list it must agree with the list.
    """

    variant: str = "d3"
    num_classes: int | None = None
    width_mult: float = _MODEL.width_mult
    fc_dim: int = _MODEL.fc_dim
    clip_len: int = _MODEL.clip_len
    crop_size: int = _MODEL.crop_size
    pool5: Literal["padded", "caffe"] = _MODEL.pool5
    dropout: float = _MODEL.dropout


@dataclass
class PreprocessSection:
    """Frame preprocessing (see `Preprocess`); clip length and crop come from the model section."""

    mean: list[float] = field(default_factory=lambda: list(_PRE.mean))
    std: list[float] = field(default_factory=lambda: list(_PRE.std))
    channel_order: Literal["RGB", "BGR"] = _PRE.channel_order
    short_side: int = _PRE.short_side
    resize_hw: list[int] | None = None
    frame_interval: int = _PRE.frame_interval


@dataclass
class DataSection:
    """Loading. `batch_size` is per process (per GPU under torchrun); `workers` per process too ("auto": see
    `c3dnet.device.loader_workers`); `drop_last` drops each epoch's last partial training batch (as the
    seed's loader does); `num_clips` is the test protocol's clips per video; `autorotate` turns video frames as
    their display matrix says (FFmpeg's default; false keeps the coded orientation); `fps` samples every video at
    that frame rate by presentation time before clips are chosen (null: its own frames; `c3d test --fps` and
    `c3d predict --fps` then match training), `source_fps` is the rate of frame folders without timestamps.
    `val_fraction` > 0 holds out that share of each class's training videos (a fixed choice by path) as the
    validation set, never trained on; 0 validates on the dataset's test subset, the seed's protocol."""

    split: int = 1
    batch_size: int = 32
    val_batch_size: int = 32
    workers: int | Literal["auto"] = "auto"
    drop_last: bool = True
    num_clips: int = 10
    skip_bad: bool = False
    splits_dir: str | None = None
    autorotate: bool = True
    fps: float | str | None = None
    source_fps: float | str | None = None
    val_fraction: float = 0.0

    def rates(self) -> tuple[Fraction | None, Fraction | None]:
        """`fps` and `source_fps` as exact fractions (None when not set)."""
        from c3dnet.data.timing import parse_rates

        return parse_rates(self.fps, self.source_fps, ("data.fps", "data.source_fps"))


@dataclass
class OptimSection:
    """SGD with momentum and a per-iteration learning-rate schedule (see `c3dnet.engine.schedule`).

    `warmup_iters` linear warm-up from 0; then "cosine" (per iteration over all iterations) or "multistep"
    (lr x `gamma` at each epoch in `milestones`). `head_lr_mult` multiplies the classifier's learning rate.
    """

    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    head_lr_mult: float = 5.0
    clip_grad_norm: float | None = 40.0
    schedule: Literal["cosine", "multistep"] = "cosine"
    warmup_iters: int = 300
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    epochs: int = 100


@dataclass
class TrainSection:
    """Run options. `checkpoint_every` saves `last` every N iterations mid-epoch (0: only at epoch ends);
    `average` is how validation combines clips; `progress`, `tensorboard` and `plots` switch those outputs."""

    seed: int = 1234
    val_every: int = 1
    checkpoint_every: int = 100
    log_every: int = 20
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    average: Literal["score", "prob"] = "score"
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True


@dataclass
class TrainConfig:
    """A whole training recipe. `TrainConfig()` is the seed's recipe."""

    model: ModelSection = field(default_factory=ModelSection)
    preprocess: PreprocessSection = field(default_factory=PreprocessSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        """Build from a nested dict, checking every key and value; `source` names the origin in errors."""
        cfg = cls()
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(d).__name__}")
        for section_name, values in d.items():
            section = _section(cfg, section_name, source)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section_name!r} must be a mapping, got {values!r}")
            for key, value in values.items():
                _set_field(section, f"{section_name}.{key}", key, value, source)
        cfg.validate(source)
        return cfg

    def with_overrides(self, overrides: list[str] | None) -> TrainConfig:
        """A copy with `section.key=value` overrides applied (values parsed as YAML, then type-checked)."""
        cfg = TrainConfig.from_dict(self.to_dict(), "<config>")
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=0.01")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) != 2:
                raise ConfigError(f"--set {item!r}: the key must be section.key, e.g. optim.lr, got {key!r}")
            source = f"--set {item}"
            section = _section(cfg, parts[0], source)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                raise ConfigError(f"{source}: the value is not valid YAML: {e}") from None
            _set_field(section, key.strip(), parts[1], value, source)
        cfg.validate("--set overrides")
        return cfg

    def validate(self, source: str) -> None:
        """Cross-field checks; raise `ConfigError` naming `source`."""
        m, o, d, t = self.model, self.optim, self.data, self.train
        if m.variant not in TEMPORAL_DEPTHS:
            choices = sorted(TEMPORAL_DEPTHS)
            raise ConfigError(f"{source}: model.variant {m.variant!r} is unknown; choose from {choices}")
        checks = [
            (o.epochs >= 1, "optim.epochs must be >= 1"),
            (o.lr > 0, "optim.lr must be > 0"),
            (o.warmup_iters >= 0, "optim.warmup_iters must be >= 0"),
            (o.head_lr_mult > 0, "optim.head_lr_mult must be > 0"),
            (o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm must be > 0 or null"),
            (o.momentum >= 0, "optim.momentum must be >= 0"),
            (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (sorted(o.milestones) == list(o.milestones), "optim.milestones must be increasing epochs"),
            (d.batch_size >= 1 and d.val_batch_size >= 1, "data.batch_size and data.val_batch_size must be >= 1"),
            (d.workers == "auto" or d.workers >= 0, "data.workers must be >= 0 or auto"),
            (d.num_clips >= 1, "data.num_clips must be >= 1"),
            (t.val_every >= 0, "train.val_every must be >= 0 (0: no validation)"),
            (t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: epoch ends only)"),
            (t.log_every >= 1, "train.log_every must be >= 1"),
            (0 <= t.seed < 2**63, "train.seed must be in 0 .. 2**63 - 1 (it seeds torch's and numpy's generators)"),
            # Upper bounds: far beyond any sensible recipe, they keep a typo from asking for terabytes or years.
            (o.epochs <= 100_000, "optim.epochs must be <= 100000"),
            (o.lr <= 100, "optim.lr must be <= 100"),
            (o.head_lr_mult <= 1000, "optim.head_lr_mult must be <= 1000"),
            (o.momentum < 1, "optim.momentum must be < 1"),
            (o.weight_decay < 1, "optim.weight_decay must be < 1"),
            (0 < o.gamma <= 1, "optim.gamma must be in (0, 1]"),
            (all(1 <= e <= o.epochs for e in o.milestones), "optim.milestones must be epochs in 1 .. optim.epochs"),
            (d.batch_size <= 65_536 and d.val_batch_size <= 65_536, "data.batch_size must be <= 65536"),
            (d.workers == "auto" or d.workers <= 1024, "data.workers must be <= 1024"),
            (d.num_clips <= 1000, "data.num_clips must be <= 1000"),
            (1 <= d.split <= 100, "data.split must be in 1 .. 100"),
            (0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1) (0: validate on the test subset)"),
            (d.val_fraction == 0 or t.val_every > 0,
             "data.val_fraction holds out training videos for validation, but train.val_every is 0; set "
             "train.val_every >= 1, or data.val_fraction=0 to train on every video"),
            (m.num_classes is None or 1 <= m.num_classes <= 10_000_000, "model.num_classes must be in 1 .. 10000000"),
            (0 < m.width_mult <= 16, "model.width_mult must be in (0, 16]"),
            (1 <= m.fc_dim <= 65_536, "model.fc_dim must be in 1 .. 65536"),
            (1 <= m.clip_len <= 1024, "model.clip_len must be in 1 .. 1024"),
            (m.crop_size <= 4096, "model.crop_size must be <= 4096"),
            (self.preprocess.short_side <= 8192, "preprocess.short_side must be <= 8192"),
            (1 <= self.preprocess.frame_interval <= 1000, "preprocess.frame_interval must be in 1 .. 1000"),
            (all(-255 <= v <= 255 for v in self.preprocess.mean), "preprocess.mean values must be in -255 .. 255"),
            (all(0 < v <= 255 for v in self.preprocess.std), "preprocess.std values must be in (0, 255]"),
            (t.log_every <= 10**9 and t.val_every <= 10**9 and t.checkpoint_every <= 10**12,
             "train.log_every, val_every and checkpoint_every are too large"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{source}: {message}")
        try:
            d.rates()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        try:
            self.model_config(num_classes=1)
            self.preprocess_record()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        # Frames are resized (to the short side, or to exactly resize_hw), then cropped: the crop must fit.
        p, crop = self.preprocess, m.crop_size
        if p.resize_hw is not None and (len(p.resize_hw) != 2 or min(p.resize_hw) < crop):
            raise ConfigError(f"{source}: preprocess.resize_hw must be [height, width], each >= model.crop_size "
                              f"({crop}), got {p.resize_hw}; fix it or set it to null to resize by short_side")
        if p.resize_hw is None and p.short_side < crop:
            raise ConfigError(f"{source}: preprocess.short_side ({p.short_side}) must be >= model.crop_size ({crop}): "
                              "frames are resized to it, then cropped; raise short_side or lower the crop")

    def model_config(self, num_classes: int) -> C3DConfig:
        m = self.model
        return C3DConfig.variant(
            m.variant, num_classes=num_classes, width_mult=m.width_mult, fc_dim=m.fc_dim, clip_len=m.clip_len,
            crop_size=m.crop_size, pool5=m.pool5, dropout=m.dropout,
        )

    def preprocess_record(self) -> Preprocess:
        p = self.preprocess
        return Preprocess(
            mean=tuple(p.mean), std=tuple(p.std), channel_order=p.channel_order, short_side=p.short_side,
            resize_hw=tuple(p.resize_hw) if p.resize_hw is not None else None, crop_size=self.model.crop_size,
            clip_len=self.model.clip_len, frame_interval=p.frame_interval,
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class Recipe:
    """A recipe shipped in the package: its file in `c3dnet/configs/` and what it is."""

    file: str
    about: str


RECIPES: dict[str, Recipe] = {
    "seed": Recipe("c3d_ucf101_seed.yaml", "the seed's (PaddleC3D) UCF-101 fine-tuning, one GPU: 83.27 top-1"),
    "mmaction": Recipe("c3d_ucf101_mmaction.yaml", "mmaction2's UCF-101 fine-tuning, 8 GPUs: 83.08 top-1"),
    "demo": Recipe("synthetic_demo.yaml", "the synthetic demo's reduced C3D, from scratch on the CPU (c3d demo)"),
}
"""The recipes `--config` takes by name. The files live in the package (`src/c3dnet/configs/`, which the
repository's `configs/` links to), so a pip-installed c3dnet has them too."""


def recipe_path(name: str) -> Path:
    """The packaged recipe file called `name` (a key of `RECIPES`)."""
    from importlib.resources import files

    if name not in RECIPES:
        raise ConfigError(f"{name!r} is not a packaged recipe; the names are {', '.join(RECIPES)}")
    return Path(str(files("c3dnet") / "configs" / RECIPES[name].file))


def resolve_config(config: str | Path) -> Path:
    """The YAML file `config` names: an existing path, else a packaged recipe's name (`seed`, `mmaction`, `demo`).

    An existing file always wins over a name. A path that exists neither way is an error that suggests the name of
    the packaged copy when its file name is one of the recipes (`configs/c3d_ucf101_seed.yaml` outside the
    repository: `--config seed`).
    """
    path = Path(config)
    if path.is_file():
        return path
    if str(config) in RECIPES:
        return recipe_path(str(config))
    packaged = next((name for name, recipe in RECIPES.items() if path.name == recipe.file), None)
    if packaged is not None:
        hint = f"its packaged copy is --config {packaged}"
    else:
        hint = f"pass a recipe name ({', '.join(RECIPES)}) or an existing YAML file"
    raise ConfigError(f"{path}: config file not found; {hint} (`c3d train --help` lists the recipes)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, given by path or packaged recipe name (`resolve_config`), or start from the defaults
    when `path` is None, and apply `--set` overrides."""
    if path is None:
        return TrainConfig().with_overrides(overrides)
    path = resolve_config(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    return TrainConfig.from_dict(raw or {}, str(path)).with_overrides(overrides)


def explicit_keys(config: TrainConfig | str | Path | None, overrides: list[str] | None = None) -> set[str]:
    """The keys ("section.key") a recipe sets itself: present in its YAML file, or given with --set. For a
    `TrainConfig` object, the fields that differ from the defaults. What is not explicit may be filled in from
    pretrained weights (`c3dnet.engine.train`)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides or []}
    if isinstance(config, TrainConfig):
        default, given = TrainConfig().to_dict(), config.to_dict()
        return keys | {f"{s}.{k}" for s in given for k in given[s] if given[s][k] != default[s][k]}
    if config is not None:
        with contextlib.suppress(ConfigError, yaml.YAMLError, OSError, UnicodeDecodeError):
            raw = yaml.safe_load(resolve_config(config).read_text(encoding="utf-8")) or {}
            if isinstance(raw, dict):
                keys |= {f"{s}.{k}" for s, values in raw.items() if isinstance(values, dict) for k in values}
    return keys


def _section(cfg: TrainConfig, name: str, source: str) -> Any:
    names = [f.name for f in fields(cfg)]
    if name not in names:
        raise ConfigError(f"{source}: unknown config section {name!r}; sections are {names}")
    return getattr(cfg, name)


def _set_field(section: Any, full_key: str, key: str, value: Any, source: str) -> None:
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        known = [f.name for f in fields(section)]
        raise ConfigError(f"{source}: unknown config key {full_key!r}; keys of this section are {known}")
    setattr(section, key, _coerce(value, hints[key], full_key, source))


def _describe(hint: Any) -> str:
    """What a value of type `hint` looks like, for error messages."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, repr(hint))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the type hint `hint`, converting only int -> float; raise `ConfigError` otherwise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        wanted = " or ".join(_describe(o) for o in options) + (" or null" if type(None) in args else "")
        raise ConfigError(f"{source}: {key} must be {wanted}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan and .inf: no field means anything by them
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module, not a user error
