"""The training loop: the seed's recipe, exactly resumable, on one CPU or many GPUs under torchrun.

Example:
    >>> from c3dnet.engine import load_config, train
    >>> cfg = load_config("configs/c3d_ucf101_seed.yaml", ["optim.epochs=2"])       # doctest: +SKIP
    >>> result = train(cfg, "data/UCF-101", weights="c3d_sports1m.safetensors",      # doctest: +SKIP
    ...                work_dir="work_dirs/ucf101")
    >>> result.best_top1                                                               # doctest: +SKIP

Exact resume: the sampler order depends on (seed, epoch), each sample's augmentation on (seed, epoch, index)
(the dataset's contract), dropout on the torch RNG saved in the state, and the learning rate on the iteration
alone. A run resumed from a mid-epoch checkpoint skips the samples it had consumed and continues with the
same batches, the same masks and the same learning rates, so it ends with the same weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from c3dnet.engine import checkpoint as ckpt
from c3dnet.engine.config import TrainConfig, load_config
from c3dnet.engine.device import autocast, configure_for, loader_workers, prepare_model, select_device, to_input
from c3dnet.engine.distributed import (
    DistInfo,
    ResumableSampler,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from c3dnet.engine.evaluate import EvalResult, evaluate
from c3dnet.engine.reports import MetricsLog
from c3dnet.engine.runner import ClipRunner, Compiled
from c3dnet.engine.schedule import LRSchedule
from c3dnet.errors import C3DError, ConfigError
from c3dnet.fileio import atomic_write_text
from c3dnet.log import get_logger
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)


class NonFiniteLossError(C3DError):
    """The loss became NaN or Inf; training stopped with the last good checkpoint kept."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    work_dir: Path
    epochs: int
    iterations: int
    best_top1: float | None
    best_epoch: int | None
    last_val: dict[str, float | int] | None
    final_loss: float
    model: C3D = field(repr=False)

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.safetensors"


@dataclass
class _Loaders:
    train: torch.utils.data.DataLoader
    train_batches: _EpochBatches
    val: torch.utils.data.DataLoader | None
    class_names: list[str]


def _loaders(cfg: TrainConfig, data: str | Path, dist_info: DistInfo, device: torch.device) -> _Loaders:
    from c3dnet.data.dataset import ClipDataset, worker_init_fn
    from c3dnet.data.sources import load_source

    d = cfg.data
    source = load_source(data, "train", split=d.split, splits_dir=d.splits_dir, skip_bad=d.skip_bad)
    preprocess = cfg.preprocess_record()
    workers = loader_workers(d.workers, device)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn)
    train_set = ClipDataset(source.records, "train", preprocess, seed=cfg.train.seed, skip_bad=d.skip_bad,
                            autorotate=d.autorotate)
    sampler = ResumableSampler(len(train_set), True, cfg.train.seed, dist_info.rank, dist_info.world_size)
    # One loader iterator serves the whole run (see _EpochBatches), and the epoch travels with each index: every
    # sample's augmentation stays keyed by (seed, epoch, index) whatever the worker.
    # The private generator keeps the DataLoader from drawing on the global torch RNG (dropout's).
    batches = _EpochBatches(sampler, d.batch_size, d.drop_last, cfg.optim.epochs)
    train_loader = torch.utils.data.DataLoader(_EpochDataset(train_set), batch_sampler=batches,
                                               generator=torch.Generator().manual_seed(cfg.train.seed), **common)
    if len(train_loader) == 0:
        raise ConfigError(f"{data}: {len(train_set)} training videos give no full batch of {d.batch_size} per "
                          f"process; lower data.batch_size or set data.drop_last=false")
    val_loader = None
    if cfg.train.val_every > 0:
        val_source = load_source(data, "test", split=d.split, splits_dir=d.splits_dir, skip_bad=d.skip_bad)
        val_set = ClipDataset(val_source.records, "val", preprocess, seed=cfg.train.seed, skip_bad=d.skip_bad,
                              autorotate=d.autorotate)
        val_sampler = ResumableSampler(len(val_set), False, 0, dist_info.rank, dist_info.world_size)
        val_loader = torch.utils.data.DataLoader(
            val_set, batch_size=d.val_batch_size, sampler=val_sampler, persistent_workers=workers > 0,
            generator=torch.Generator(), **common,
        )
    return _Loaders(train_loader, batches, val_loader, source.class_names)


class _EpochBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) pairs, epoch after epoch from `start(epoch, skip)` to the last one, in one pass.

    One iterator for the whole run means the loader's workers run on into the next epoch (and through
    validation and checkpoints) instead of starting afresh with an empty pipeline at every epoch, which costs
    about a batch's decoding time per epoch. Each epoch's order is the `ResumableSampler`'s for that epoch,
    cut into batches on its own (a short last batch is dropped with `drop_last`, never merged into the next).
    `len()` is the batches per epoch.
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int, drop_last: bool, epochs: int) -> None:
        self.sampler, self.batch_size, self.drop_last, self.epochs = sampler, batch_size, drop_last, epochs
        self.first_epoch, self.skip = 0, 0

    def start(self, epoch: int, skip: int) -> None:
        """Where the next iteration begins: `epoch`, after its first `skip` samples (a resumed run)."""
        self.first_epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.epochs):
            self.sampler.set_epoch(epoch, self.skip if epoch == self.first_epoch else 0)
            order = self.sampler.indices()
            end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
            for lo in range(0, end, self.batch_size):
                yield [(epoch, int(i)) for i in order[lo:lo + self.batch_size]]

    def __len__(self) -> int:
        n = self.sampler.per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class _EpochDataset(torch.utils.data.Dataset):
    """Wraps a `ClipDataset` so that each item names its epoch: workers need no shared state."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]


def _build_model(cfg: TrainConfig, class_names: list[str], weights: str | Path | None) -> C3D:
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    preprocess = cfg.preprocess_record()
    if weights is None:
        return C3D(cfg.model_config(len(class_names)), preprocess, class_names)
    from c3dnet.weights import load_model

    model = load_model(weights, num_classes=len(class_names), class_names=class_names)
    m = model.config
    if (m.clip_len, m.crop_size) != (preprocess.clip_len, preprocess.crop_size):
        raise ConfigError(f"{weights}: the weights take {m.clip_len} frames of {m.crop_size}px but the config asks "
                          f"for {preprocess.clip_len} of {preprocess.crop_size}; set model.clip_len/crop_size to match")
    if model.preprocess != preprocess:
        log.warning("%s was made with preprocessing %s; fine-tuning with the config's %s", weights,
                    model.preprocess.to_dict(), preprocess.to_dict())
    model.preprocess = preprocess
    return model


def _optimizer(model: C3D, cfg: TrainConfig) -> torch.optim.SGD:
    o = cfg.optim
    groups = [
        {"params": model.backbone_parameters(), "lr_mult": 1.0},
        {"params": model.head_parameters(), "lr_mult": o.head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _as_config(config: TrainConfig | str | Path | None, overrides: list[str] | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.with_overrides(overrides)
    return load_config(config, overrides)


def train(
    config: TrainConfig | str | Path | None,
    data: str | Path,
    weights: str | Path | None = None,
    work_dir: str | Path = "work_dirs/c3d",
    resume: bool = False,
    device: str | None = "auto",
    overrides: list[str] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a C3D on `data` with the recipe `config`; see the module docstring.

    Args:
        config: a `TrainConfig`, a YAML path, or None for the seed's recipe.
        data: any source `c3dnet.data.sources.load_source` reads; its test subset is the validation set.
        weights: optional pretrained weights (any format `load_model` reads); the head is re-initialised
            when the class count differs.
        work_dir: where checkpoints, metrics, plots and the resolved config go.
        resume: continue from `<work_dir>/last.state.pt` exactly where it stopped.
        device: "auto", "cpu" or "cuda"; under torchrun each process takes its LOCAL_RANK GPU.
        overrides: `section.key=value` strings applied on top of `config`.

    Returns:
        A `TrainResult`; `<work_dir>/last.safetensors` and `best.safetensors` hold the weights.
    """
    cfg = _as_config(config, overrides)
    dist_info = init_distributed(device)
    try:
        return _train(cfg, data, weights, Path(work_dir), resume, device, dist_info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, data: str | Path, weights: str | Path | None, work_dir: Path, resume: bool,
           device_name: str | None, dist_info: DistInfo) -> TrainResult:
    device = configure_for(select_device(device_name, dist_info.local_rank if dist_info.is_distributed else None))
    main = dist_info.is_main
    state_path = work_dir / "last.state.pt"
    if resume and not state_path.is_file():
        raise ConfigError(f"{work_dir}: --resume given but {state_path.name} is missing there; check --work-dir "
                          "or start without --resume")
    if not resume and state_path.is_file():
        log.warning("%s holds an earlier run; starting afresh and overwriting it (pass --resume to continue it)",
                    work_dir)
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work_dir / "config.yaml", cfg.to_yaml())
    loaders = _loaders(cfg, data, dist_info, device)
    model = _build_model(cfg, loaders.class_names, weights)
    prepare_model(model, device, cfg.train.channels_last)
    optimizer = _optimizer(model, cfg)

    iters_per_epoch = len(loaders.train)
    epochs = cfg.optim.epochs
    schedule = LRSchedule(cfg.optim.lr, epochs * iters_per_epoch, iters_per_epoch, cfg.optim.schedule,
                          cfg.optim.warmup_iters, tuple(cfg.optim.milestones), cfg.optim.gamma)
    metrics = MetricsLog(work_dir, enabled=main, tensorboard=cfg.train.tensorboard)
    iteration, best_top1, best_epoch, last_val = 0, None, None, None
    torch.manual_seed(cfg.train.seed + dist_info.rank)  # dropout masks differ between ranks
    if resume:
        state = ckpt.load_state(state_path)
        if state["iters_per_epoch"] != iters_per_epoch:
            raise ConfigError(f"{state_path}: saved with {state['iters_per_epoch']} iterations per epoch, now "
                              f"{iters_per_epoch}; resume with the same data, batch size and number of processes")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        iteration, best_top1, best_epoch, last_val = (state["iteration"], state["best_top1"], state["best_epoch"],
                                                      state["last_val"])
        ckpt.set_rng_state(state["rng"][dist_info.rank] if dist_info.rank < len(state["rng"]) else state["rng"][0])
        metrics.resume(iteration)
        log.info("resumed from %s at epoch %d, iteration %d", state_path, iteration // iters_per_epoch, iteration)
    metrics.open_tensorboard(iteration if resume else None)

    net: nn.Module = model
    if dist_info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and cfg.train.compile:
        net = Compiled(net)
    elif cfg.train.compile:
        log.info("torch.compile is only used on CUDA; training eagerly on the CPU")

    run = _Run(cfg, model, net, optimizer, schedule, loaders, metrics, device, dist_info, work_dir, iters_per_epoch)
    run.best_top1, run.best_epoch, run.last_val = best_top1, best_epoch, last_val
    final_loss, last_plot = float("nan"), time.monotonic()
    log.info("training %d epochs x %d iterations (batch %d x %d processes) on %s; work dir %s", epochs,
             iters_per_epoch, cfg.data.batch_size, dist_info.world_size, device, work_dir)
    if main and cfg.train.progress:
        from tqdm import tqdm

        # One bar for the whole run, so its ETA is the run's; the postfix carries loss, lr, clips/s and data wait.
        run.bar = tqdm(total=epochs * iters_per_epoch, initial=iteration, unit="it", dynamic_ncols=True)
    try:
        while iteration < epochs * iters_per_epoch:
            epoch = iteration // iters_per_epoch
            iteration, final_loss = run.train_epoch(epoch, iteration)
            val_due = cfg.train.val_every > 0 and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == epochs)
            if val_due and loaders.val is not None:
                run.validate(epoch, iteration)
            run.save(iteration)
            if main:
                metrics.flush()
                # Drawing takes about a second: redraw at most once a minute, and at the end.
                if cfg.train.plots and time.monotonic() - last_plot > 60:
                    metrics.plot()
                    last_plot = time.monotonic()
        if main and cfg.train.plots:
            metrics.plot()
        run.wait_saved()
    finally:
        run.batches = None  # ends the training loader's worker processes
        if run.writer is not None:
            run.writer.shutdown(wait=True)  # the last checkpoint is on disk when train() returns (or raises)
        metrics.close()
        if run.bar is not None:
            run.bar.close()
    barrier()
    return TrainResult(work_dir, epochs, iteration, run.best_top1, run.best_epoch, run.last_val, final_loss, model)


class _Run:
    """The mutable state of one training run, with its epoch, validation and checkpoint steps."""

    def __init__(self, cfg: TrainConfig, model: C3D, net: nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: LRSchedule, loaders: _Loaders, metrics: MetricsLog, device: torch.device,
                 dist_info: DistInfo, work_dir: Path, iters_per_epoch: int) -> None:
        self.cfg, self.model, self.net, self.optimizer, self.schedule = cfg, model, net, optimizer, schedule
        self.loaders, self.metrics, self.device = loaders, metrics, device
        self.dist, self.work_dir = dist_info, work_dir
        self.iters_per_epoch = iters_per_epoch
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict[str, Any] | None = None
        self.amp = cfg.train.amp and device.type == "cuda"
        self.bar: Any = None
        self.batches: _Prefetcher | None = None
        self.writer: ThreadPoolExecutor | None = None  # writes checkpoints while training goes on
        self.saving: Future | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward (`Compiled` falls back to eager mode only when its first call fails)."""
        with autocast(self.device, self.amp):
            return self.net(x)

    def train_epoch(self, epoch: int, iteration: int) -> tuple[int, float]:
        cfg = self.cfg
        done = iteration - epoch * self.iters_per_epoch  # batches of this epoch already trained (resume)
        if self.batches is None:  # the run's one pass over the training data, from where it stands
            self.loaders.train_batches.start(epoch, skip=done * cfg.data.batch_size)
            self.batches = _Prefetcher(iter(self.loaders.train), self.model.preprocess, self.device,
                                       cfg.train.channels_last)
        self.net.train()
        bar = self.bar
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{cfg.optim.epochs}")
        window = _Window()
        loss_value = float("nan")
        tick = time.perf_counter()
        while done < self.iters_per_epoch:
            self.check_saved()
            x, y, data_time = self.batches.next()
            lr = self.schedule.apply(self.optimizer, iteration)
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            stats = torch.stack([loss.detach(), (logits.detach().argmax(1) == y).float().mean()])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
            self.optimizer.step()
            # While the GPU runs this step: the next batch's copy and normalisation on a side stream. Only then
            # wait for the step's loss, so the GPU goes straight on to the next step.
            data_time += self.batches.prefetch()
            loss_local, correct = stats.tolist()  # one device-to-host copy for both numbers
            loss_value = all_reduce_mean(loss_local, self.device)
            if not math.isfinite(loss_value):  # weights are now bad in memory, never on disk
                raise NonFiniteLossError(
                    f"the training loss is {loss_value} at epoch {epoch + 1}, iteration {iteration}; stopped. The last "
                    f"good checkpoint is {self.work_dir / 'last.state.pt'}: lower optim.lr (or keep "
                    "optim.clip_grad_norm set) and resume with --resume"
                )
            iteration += 1
            done += 1
            window.add(loss_value, correct, y.shape[0] * self.dist.world_size, data_time, time.perf_counter() - tick)
            if iteration % cfg.train.log_every == 0 or done == self.iters_per_epoch:
                self.metrics.log({"kind": "train", "epoch": epoch + 1, "iteration": iteration, "lr": lr,
                                  **window.summary()})
                if bar is not None:
                    s = window.summary()
                    bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{lr:.2e}", clips_s=f"{s['clips_per_s']:.1f}",
                                    data_wait=f"{s['data_wait']:.0%}")
                window = _Window()
            if bar is not None:
                bar.update(1)
            if cfg.train.checkpoint_every and iteration % cfg.train.checkpoint_every == 0 \
                    and done < self.iters_per_epoch:
                self.save(iteration, model_file=False)
                if self.dist.is_main:
                    self.metrics.flush()
            tick = time.perf_counter()
        if self.dist.is_main:
            log.info("epoch %d/%d: loss %.4f, lr %.3g", epoch + 1, cfg.optim.epochs, loss_value,
                     self.schedule.lr(iteration - 1))
        return iteration, loss_value

    def validate(self, epoch: int, iteration: int) -> EvalResult:
        # The runner puts the model in eval mode; the next epoch puts it back in training mode.
        runner = ClipRunner(self.model, "logits", self.device, amp=self.amp, preprocess=self.model.preprocess,
                            channels_last=self.cfg.train.channels_last)
        result = evaluate(runner, self.loaders.val, average=self.cfg.train.average)
        self.last_val = result.metrics()
        self.metrics.log({"kind": "val", "epoch": epoch + 1, "iteration": iteration, **self.last_val})
        log.info("epoch %d validation (1 centre clip per video, %d videos): top-1 %.4f, top-5 %.4f, mean class %.4f",
                 epoch + 1, result.num_videos, result.top1, result.top5, result.mean_class_accuracy)
        if self.best_top1 is None or result.top1 > self.best_top1:
            self.best_top1, self.best_epoch = result.top1, epoch + 1
            if self.dist.is_main:
                ckpt.save_model_file(self.model, self.work_dir / "best.safetensors",
                                     extra={"epoch": epoch + 1, "iteration": iteration, "val": self.last_val})
        return result

    def save(self, iteration: int, model_file: bool = True) -> None:
        """`last.state.pt` and (with `model_file`, at epoch ends) `last.safetensors`; rank 0 writes, every rank's
        RNG state is gathered. Mid-epoch saves skip the native file: the state alone is what a resume needs.

        The tensors are copied to the host here; the files are written (and fsynced) on a writer thread while
        training goes on, one checkpoint at a time, so a save costs the copy, not the disk (seconds a checkpoint
        on a virtual disk). Files are replaced atomically: until a write is complete the previous one stands.
        """
        from c3dnet.engine.distributed import all_gather_objects

        rng = all_gather_objects(ckpt.rng_state())
        if not self.dist.is_main:
            barrier()
            return
        self.wait_saved()
        model_state = _host_copy(self.model.state_dict())
        native = None
        if model_file:
            from c3dnet.weights.native import NATIVE_FORMAT

            m = self.model
            extra = {"epoch": iteration // self.iters_per_epoch, "iteration": iteration, "val": self.last_val}
            native = (model_state, m.config, m.preprocess, m.class_names,
                      getattr(m, "source_format", NATIVE_FORMAT), extra)
        state = {
            "model": model_state,
            "optimizer": _host_copy(self.optimizer.state_dict()),
            "iteration": iteration,
            "iters_per_epoch": self.iters_per_epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "last_val": self.last_val,
            "rng": rng,
            "config": self.cfg.to_dict(),
        }
        if self.writer is None:
            self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="c3d-checkpoint")
        self.saving = self.writer.submit(_write_checkpoint, self.work_dir, native, state)
        barrier()

    def check_saved(self) -> None:
        """Re-raise the error of a checkpoint write that has failed (a full disk, say), without waiting."""
        if self.saving is not None and self.saving.done():
            self.wait_saved()

    def wait_saved(self) -> None:
        """Wait for the checkpoint being written; re-raise its error."""
        saving, self.saving = self.saving, None
        if saving is not None:
            saving.result()


def _host_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the host (never aliased, even on the CPU): a snapshot training may not
    change while it is being written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def _write_checkpoint(work_dir: Path, native: tuple | None, state: dict[str, Any]) -> None:
    if native is not None:
        from c3dnet.weights.native import save_native

        model_state, config, preprocess, class_names, source_format, extra = native
        save_native(work_dir / "last.safetensors", model_state, config, preprocess, class_names,
                    source_format=source_format, extra=extra)
    ckpt.save_state(work_dir / "last.state.pt", state)


class _Prefetcher:
    """Training batches on the device, one step ahead.

    `prefetch()` takes the next batch from the loader and starts its host-to-device copy and normalisation on a
    side CUDA stream, so they overlap the step the GPU is running; `next()` hands it over once the copy is done
    (on the CPU everything simply runs in order). Both report the seconds spent waiting for the loader.
    """

    def __init__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], preprocess: Preprocess,
                 device: torch.device, channels_last: bool) -> None:
        self.batches, self.preprocess, self.device, self.channels_last = batches, preprocess, device, channels_last
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ready: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefetch(self) -> float:
        if self.ready is not None:
            return 0.0
        tick = time.perf_counter()
        try:
            clips, labels, _ = next(self.batches)
        except StopIteration:  # the run's last batch has been trained on
            return 0.0
        wait = time.perf_counter() - tick
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            x = to_input(clips.flatten(0, 1), self.preprocess, self.device, self.channels_last)
            self.ready = (x, labels.to(self.device, non_blocking=True))
        return wait

    def next(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        wait = self.prefetch()
        if self.ready is None:
            raise RuntimeError("the training loader ran out of batches before the last epoch ended")
        (x, y), self.ready = self.ready, None
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            x.record_stream(current)  # made on the side stream, used (and freed) on this one
            y.record_stream(current)
        return x, y, wait


class _Window:
    """Running sums over the iterations between two log lines."""

    def __init__(self) -> None:
        self.n = self.clips = 0
        self.loss = self.correct = self.data_time = self.total_time = 0.0

    def add(self, loss: float, correct: float, clips: int, data_time: float, total_time: float) -> None:
        self.n += 1
        self.clips += clips
        self.loss += loss
        self.correct += correct
        self.data_time += data_time
        self.total_time += total_time

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "loss": self.loss / n,
            "top1": self.correct / n,
            "clips_per_s": self.clips / max(self.total_time, 1e-9),
            "data_wait": self.data_time / max(self.total_time, 1e-9),
        }
