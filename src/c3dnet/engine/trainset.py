"""What a training run trains and validates on: the class list (checked against the labels before any model is
built), the validation set (the test subset, or a held-out share of the training list) and their loaders.

Without a class file, an annotation list's class count is its largest label + 1: one stray label of 1,000,000
would ask for a 1,000,001-class head (4 GB at fc 4096). `class_names_for` warns when the labels imply more
classes than there are labelled videos, and refuses more than `MAX_IMPLIED_CLASSES`, naming the list's line of
the largest label; `model.num_classes` declares the count instead.

`hold_out` is `data.val_fraction`: per class, a fixed share of the training videos, chosen by a hash of each
video's path relative to the dataset root, so the choice is the same on every run, process and machine.

Example:
    >>> train_records, val_records = hold_out(source.records, 0.1, source.root)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from c3dnet.data.epoch_order import EpochBatches, EpochDataset, ResumableSampler
from c3dnet.data.sources import Source, VideoRecord, load_source, text_lines
from c3dnet.device import loader_workers
from c3dnet.engine.config import TrainConfig
from c3dnet.engine.distributed import DistInfo
from c3dnet.errors import ConfigError, DataError
from c3dnet.log import get_logger

log = get_logger(__name__)

MAX_IMPLIED_CLASSES = 10_000
"""The most classes an annotation list without a class file may imply by its largest label (more than any public
action dataset labels: Kinetics-700, Sports-1M's 487); `model.num_classes` raises it."""


def class_names_for(source: Source, data: str | Path, cfg: TrainConfig) -> list[str]:
    """The class names training uses: the source's, checked against `model.num_classes` and, for a list without a
    class file, against `MAX_IMPLIED_CLASSES` and the number of labelled videos.

    Raises:
        DataError: a label implies more classes than the bound, or than `model.num_classes` allows.
        ConfigError: `model.num_classes` contradicts the dataset's class list.
    """
    names, declared = source.class_names, cfg.model.num_classes
    if not _implied_by_labels(source):
        if declared is not None and declared != len(names):
            raise ConfigError(f"{data}: model.num_classes is {declared} but the dataset's class list has {len(names)} "
                              "classes; remove model.num_classes (it is for lists without a class file) or fix the "
                              "class list")
        return names
    top = len(names) - 1
    where = _label_line(Path(data), top)
    videos = len(source.records)
    if declared is not None:
        if top >= declared:
            raise DataError(f"{where}: label {top} is out of range for model.num_classes={declared} (labels are "
                            "0-based); fix the label or raise model.num_classes")
        return [str(i) for i in range(declared)]
    if len(names) > MAX_IMPLIED_CLASSES:
        raise DataError(f"{where}: label {top} implies {len(names):,} classes for {videos:,} labelled videos (the "
                        "list has no class file, so the class count is the largest label + 1); labels are 0-based "
                        "class indices: fix the label, put a classes.txt (one name per line) beside the list, or set "
                        f"model.num_classes={len(names)} if you mean it (at most {MAX_IMPLIED_CLASSES:,} without it)")
    if len(names) > videos:
        log.warning("%s: label %d implies %d classes, more than the %d labelled videos (the list has no class "
                    "file, so the class count is the largest label + 1); check the labels, or put a classes.txt "
                    "beside the list or set model.num_classes to say how many there are", where, top, len(names),
                    videos)
    return names


def _implied_by_labels(source: Source) -> bool:
    """Whether the class names were made up from the labels ("0" .. "K-1": an annotation list without a class
    file), rather than read from a class list or folder names."""
    return source.format.startswith("list_") and source.class_names == [str(i) for i in range(len(source.class_names))]


def _label_line(path: Path, label: int) -> str:
    """`path:line` of the first line whose label (its last field) is `label`; `path` where none is found."""
    for lineno, line in text_lines(path):
        last = line.split()[-1]
        if last.lstrip("+-").isdigit() and int(last) == label:
            return f"{path}:{lineno}"
    return str(path)


def hold_out(records: list[VideoRecord], fraction: float, root: Path) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, val): `fraction` of each class's videos held out for validation, the rest for training.

    A class of n >= 2 videos gives min(n - 1, max(1, round(fraction * n))) of them, those with the smallest
    SHA-256 of their path relative to `root` (a class of one video keeps it for training). Both lists keep the
    records' order. The choice depends on the paths alone: not on the list's order, the seed or the machine.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_class[record.label].append(i)
    held: set[int] = set()
    for members in by_class.values():
        n = len(members)
        k = min(n - 1, max(1, round(fraction * n))) if n >= 2 and fraction > 0 else 0
        held.update(sorted(members, key=lambda i: _path_key(records[i].path, root))[:k])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def _path_key(path: Path, root: Path) -> str:
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        rel = Path(path).as_posix()
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()


@dataclass
class Loaders:
    """The training loader (one iterator for the whole run: `EpochBatches`) and the validation loader."""

    train: torch.utils.data.DataLoader
    train_batches: EpochBatches
    val: torch.utils.data.DataLoader | None
    val_name: str  # what the validation set is, for the log


def build_loaders(cfg: TrainConfig, source: Source, data: str | Path, dist_info: DistInfo,
                  device: torch.device) -> Loaders:
    """The loaders of `source`'s training records, less those `data.val_fraction` holds out for validation."""
    from c3dnet.data.dataset import ClipDataset, worker_init_fn
    from c3dnet.forks import loader_context

    d = cfg.data
    preprocess = cfg.preprocess_record()
    workers = loader_workers(d.workers, device)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                  multiprocessing_context=loader_context(workers))
    fps, source_fps = d.rates()
    train_records, val_records = hold_out(source.records, d.val_fraction, source.root)
    if d.val_fraction > 0:
        if not val_records:
            raise ConfigError(f"{data}: data.val_fraction={d.val_fraction} holds out no video (no class has two); "
                              "add videos or validate on the test subset (data.val_fraction=0)")
        val_name = f"{len(val_records)} held-out training videos (data.val_fraction={d.val_fraction})"
        log.info("%s: holding out %d of %d training videos for validation (data.val_fraction=%g, per class); "
                 "best.safetensors is chosen on them and they are never trained on", data, len(val_records),
                 len(source.records), d.val_fraction)
    else:
        val_name = "the test subset (the seed's protocol)"
    train_set = ClipDataset(train_records, "train", preprocess, seed=cfg.train.seed, skip_bad=d.skip_bad,
                            autorotate=d.autorotate, fps=fps, source_fps=source_fps)
    sampler = ResumableSampler(len(train_set), True, cfg.train.seed, dist_info.rank, dist_info.world_size)
    # One loader iterator serves the whole run (see EpochBatches), and the epoch travels with each index: every
    # sample's augmentation stays keyed by (seed, epoch, index) whatever the worker.
    # The private generator keeps the DataLoader from drawing on the global torch RNG (dropout's).
    batches = EpochBatches(sampler, d.batch_size, d.drop_last, cfg.optim.epochs)
    train_loader = torch.utils.data.DataLoader(EpochDataset(train_set), batch_sampler=batches,
                                               generator=torch.Generator().manual_seed(cfg.train.seed), **common)
    if len(train_loader) == 0:
        raise ConfigError(f"{data}: {len(train_set)} training videos give no full batch of {d.batch_size} per "
                          f"process; lower data.batch_size or set data.drop_last=false")
    val_loader = None
    if cfg.train.val_every > 0:
        if d.val_fraction == 0:
            val_records = load_source(data, "test", split=d.split, splits_dir=d.splits_dir,
                                      skip_bad=d.skip_bad).records
        val_set = ClipDataset(val_records, "val", preprocess, seed=cfg.train.seed, skip_bad=d.skip_bad,
                              autorotate=d.autorotate, fps=fps, source_fps=source_fps)
        val_sampler = ResumableSampler(len(val_set), False, 0, dist_info.rank, dist_info.world_size)
        val_loader = torch.utils.data.DataLoader(
            val_set, batch_size=d.val_batch_size, sampler=val_sampler, persistent_workers=workers > 0,
            generator=torch.Generator(), **common,
        )
    return Loaders(train_loader, batches, val_loader, val_name)
