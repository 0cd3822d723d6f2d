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

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import c3dnet.engine.checkpoint as ckpt
from c3dnet.data.sources import load_source
from c3dnet.device import autocast, configure_for, prepare_model, select_device
from c3dnet.engine.checkpoint import Checkpoints, Progress
from c3dnet.engine.config import TrainConfig, explicit_keys, load_config
from c3dnet.engine.distributed import (
    DistInfo,
    PeerLostError,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    is_peer_loss,
    peer_loss_reason,
    restart_count,
)
from c3dnet.engine.evaluate import EvalResult, evaluate
from c3dnet.engine.prefetch import Prefetcher
from c3dnet.engine.reports import MetricsLog
from c3dnet.engine.schedule import LRSchedule
from c3dnet.engine.trainset import build_loaders, class_names_for
from c3dnet.errors import C3DError, ConfigError
from c3dnet.fileio import atomic_write_text
from c3dnet.inference.backends import Compiled
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import get_logger, progress_bar
from c3dnet.model import C3D

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
    final_loss: float  # the last epoch's mean training loss over all its clips (not its last batch's)
    model: C3D = field(repr=False)

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.safetensors"


ARCHITECTURE = ("variant", "width_mult", "fc_dim", "pool5", "clip_len", "crop_size")
"""The model fields pretrained weights fix (not num_classes, which fine-tuning changes, nor dropout, a recipe
choice)."""


def _pretrained(weights: str | Path, class_names: list[str], cfg: TrainConfig,
                explicit: set[str]) -> tuple[C3D, TrainConfig]:
    """The weights loaded for fine-tuning, and the recipe with their architecture.

    A model field the recipe sets itself (in its file or with --set) must agree with the weights: a contradiction
    is an error naming both values. A field it leaves to its default takes the weights' value, so `config.yaml`
    records the architecture that is trained.
    """
    from c3dnet.model import TEMPORAL_DEPTHS
    from c3dnet.weights import load_model

    model = load_model(weights, num_classes=len(class_names), class_names=class_names)
    m = model.config
    if m.in_channels != 3:
        raise ConfigError(f"{weights}: the weights take {m.in_channels} input channels; c3dnet trains on RGB (3)")
    variant = next((name for name, depths in TEMPORAL_DEPTHS.items() if depths == m.temporal_depths), None)
    if variant is None:
        raise ConfigError(f"{weights}: temporal depths {m.temporal_depths} are none of the variants "
                          f"{sorted(TEMPORAL_DEPTHS)}; c3dnet cannot fine-tune them")
    theirs = {"variant": variant, "width_mult": m.width_mult, "fc_dim": m.fc_dim, "pool5": m.pool5,
              "clip_len": m.clip_len, "crop_size": m.crop_size}
    conflicts, fill = [], []
    for name in ARCHITECTURE:
        ours = getattr(cfg.model, name)
        if ours == theirs[name]:
            continue
        if f"model.{name}" in explicit:
            conflicts.append(f"model.{name} is {ours!r} in the recipe but {theirs[name]!r} in the weights")
        else:
            fill.append(f"model.{name}={theirs[name]}")
    if conflicts:
        raise ConfigError(f"{weights}: the recipe's model section contradicts the weights: {'; '.join(conflicts)}; "
                          "remove those keys (the weights' values are then used) or fine-tune other weights")
    if fill:
        log.info("%s: taking %s from the weights", weights, ", ".join(fill))
        cfg = cfg.with_overrides(fill)
    model.set_dropout(cfg.model.dropout)
    preprocess = cfg.preprocess_record()
    if model.preprocess != preprocess:
        log.warning("%s was made with preprocessing %s; fine-tuning with the config's %s", weights,
                    model.preprocess.to_dict(), preprocess.to_dict())
    model.preprocess = preprocess
    return model, cfg


def _optimizer(model: C3D, cfg: TrainConfig) -> torch.optim.SGD:
    o = cfg.optim
    groups = [
        {"params": model.backbone_parameters(), "lr_mult": 1.0},
        {"params": model.head_parameters(), "lr_mult": o.head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _schedule(cfg: TrainConfig, iters_per_epoch: int) -> LRSchedule:
    o = cfg.optim
    return LRSchedule(o.lr, o.epochs * iters_per_epoch, iters_per_epoch, o.schedule, o.warmup_iters,
                      tuple(o.milestones), o.gamma)


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
    overwrite: bool = False,
) -> TrainResult:
    """Train (or fine-tune) a C3D on `data` with the recipe `config`; see the module docstring.

    Args:
        config: a `TrainConfig`, a YAML path, or None for the seed's recipe.
        data: any source `c3dnet.data.sources.load_source` reads; its test subset is the validation set, unless
            `data.val_fraction` holds out a share of the training videos instead (`c3dnet.engine.trainset`).
        weights: optional pretrained weights (any format `load_model` reads); the head is re-initialised
            when the class count differs.
        work_dir: where checkpoints, metrics, plots and the resolved config go.
        resume: continue from `<work_dir>/last.state.pt` exactly where it stopped. When torchrun restarts the
            processes (`--max-restarts`), a restarted run resumes from that file by itself.
        device: "auto", "cpu" or "cuda"; under torchrun each process takes its LOCAL_RANK GPU.
        overrides: `section.key=value` strings applied on top of `config`.
        overwrite: start afresh in a work dir that holds an earlier run, deleting that run's files (`RUN_FILES`)
            first; without it such a work dir is refused (unless `resume`).

    Returns:
        A `TrainResult`; `<work_dir>/last.safetensors` and `best.safetensors` hold the weights.

    Raises:
        PeerLostError: under torchrun, another process or node died: one line naming the last checkpoint.
    """
    cfg = _as_config(config, overrides)
    work_dir = Path(work_dir)
    dist_info = init_distributed(device)
    if restart_count() > 0 and not resume:
        # torchrun restarted the processes after a failure: this run's own files are in the work dir.
        resume = (work_dir / "last.state.pt").is_file()
        overwrite = overwrite or not resume
        log.warning("torchrun restart %d: %s", restart_count(), f"resuming from {work_dir / 'last.state.pt'}"
                    if resume else "no checkpoint was written before the failure; starting again")
    try:
        return _train(cfg, data, weights, work_dir, resume, device, dist_info, overwrite,
                      explicit_keys(config, overrides))
    except RuntimeError as e:
        if not (dist_info.is_distributed and is_peer_loss(e)):
            raise
        raise PeerLostError(_peer_lost_message(work_dir, dist_info, e)) from e
    finally:
        cleanup_distributed()


def _peer_lost_message(work_dir: Path, dist_info: DistInfo, error: RuntimeError) -> str:
    state = work_dir / "last.state.pt"
    last = f"the last checkpoint is {ckpt.describe_state(state)}" if state.is_file() else \
        f"no checkpoint was written yet in {work_dir} (rerun without --resume)"
    return (f"rank {dist_info.rank} of {dist_info.world_size} lost contact with the other processes of the run "
            f"({peer_loss_reason(error)}): a process or node has died, so every process stops. Rerun every node "
            f"with the same torchrun topology (--nnodes, --nproc_per_node) and the same command plus --resume; "
            f"{last}")


def _train(cfg: TrainConfig, data: str | Path, weights: str | Path | None, work_dir: Path, resume: bool,
           device_name: str | None, dist_info: DistInfo, overwrite: bool = False,
           explicit: set[str] | None = None) -> TrainResult:
    device = configure_for(select_device(device_name, dist_info.local_rank if dist_info.is_distributed else None))
    main = dist_info.is_main
    state_path = _check_work_dir(work_dir, resume, overwrite, main)
    d = cfg.data
    source = load_source(data, "train", split=d.split, splits_dir=d.splits_dir, skip_bad=d.skip_bad)
    class_names = class_names_for(source, data, cfg)  # checked before a model of that many classes is built
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    if weights is None:
        model = C3D(cfg.model_config(len(class_names)), cfg.preprocess_record(), class_names)
    else:
        model, cfg = _pretrained(weights, class_names, cfg, explicit if explicit is not None else set())
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work_dir / "config.yaml", cfg.to_yaml())  # the recipe trained, weights' fields filled in
    loaders = build_loaders(cfg, source, data, dist_info, device)
    prepare_model(model, device, cfg.train.channels_last)
    optimizer = _optimizer(model, cfg)
    iters_per_epoch, epochs = len(loaders.train), cfg.optim.epochs
    schedule = _schedule(cfg, iters_per_epoch)
    metrics = MetricsLog(work_dir, enabled=main, tensorboard=cfg.train.tensorboard)
    progress = Progress()
    torch.manual_seed(cfg.train.seed + dist_info.rank)  # dropout masks differ between ranks
    if resume:
        progress = _resume(state_path, model, optimizer, iters_per_epoch, dist_info, epochs)
        metrics.resume(progress.iteration)
    metrics.open_tensorboard(progress.iteration if resume else None)

    amp = cfg.train.amp and device.type == "cuda"
    checkpoints = Checkpoints(work_dir, cfg, iters_per_epoch, dist_info)
    log.info("training %d epochs x %d iterations (batch %d x %d processes) on %s; work dir %s", epochs,
             iters_per_epoch, cfg.data.batch_size, dist_info.world_size, device, work_dir)
    # One bar for the whole run, so its ETA is the run's; the postfix carries loss, lr, clips/s and data wait.
    bar = progress_bar(epochs * iters_per_epoch, "train", "it", progress.iteration, main and cfg.train.progress)
    # The run's one pass over the training data, from where it stands.
    epoch = progress.iteration // iters_per_epoch
    loaders.train_batches.start(epoch, skip=(progress.iteration - epoch * iters_per_epoch) * cfg.data.batch_size)
    batches = Prefetcher(iter(loaders.train), model.preprocess, device, cfg.train.channels_last)
    step = Step(_network(model, cfg, device, dist_info), model, optimizer, schedule, device, amp,
                cfg.optim.clip_grad_norm)
    final_loss, last_plot = float("nan"), time.monotonic()
    try:
        while progress.iteration < epochs * iters_per_epoch:
            epoch = progress.iteration // iters_per_epoch
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            final_loss = train_one_epoch(step, batches, epoch, progress, iters_per_epoch, cfg, metrics, checkpoints,
                                         dist_info, bar)
            val_due = cfg.train.val_every > 0 and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == epochs)
            if val_due and loaders.val is not None:
                _record_validation(validate(model, loaders.val, device, amp, cfg), epoch, progress, metrics,
                                   checkpoints, model, loaders.val_name)
            checkpoints.save(model, optimizer, progress)
            if main:
                metrics.flush()
            # Drawing takes about a second: redraw at most once a minute, and at the end.
            if main and cfg.train.plots and time.monotonic() - last_plot > 60:
                metrics.plot()
                last_plot = time.monotonic()
        if main and cfg.train.plots:
            metrics.plot()
        checkpoints.close()  # the last checkpoint is on disk when train() returns; a failed write raises here
    finally:
        del batches  # ends the training loader's worker processes
        checkpoints.close(raise_errors=False)  # on the way out of an error: written what could be, not masking it
        metrics.close()
        bar.close()
    barrier()
    return TrainResult(work_dir, epochs, progress.iteration, progress.best_top1, progress.best_epoch,
                       progress.last_val, final_loss, model)


RUN_FILES = ("config.yaml", "last.state.pt", "last.safetensors", "best.safetensors", "metrics.jsonl", "curves.png",
             "tensorboard")
"""What a training run writes into its work dir: what `--overwrite` deletes, and nothing else."""


def _check_work_dir(work_dir: Path, resume: bool, overwrite: bool, main: bool) -> Path:
    """The training state's path in `work_dir`. `resume` needs it; a fresh run refuses a work dir holding an
    earlier run's files unless `overwrite`, which deletes those files (and only those) first."""
    state_path = work_dir / "last.state.pt"
    if resume:
        if not state_path.is_file():
            raise ConfigError(f"{work_dir}: --resume given but {state_path.name} is missing there; check --work-dir "
                              "or start without --resume")
        return state_path
    earlier = [name for name in RUN_FILES if (work_dir / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(f"{work_dir}: holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
                          "--overwrite to start afresh (deleting those files only), or choose another --work-dir")
    if earlier and main:
        import shutil

        log.warning("%s: deleting the earlier run's %s (--overwrite)", work_dir, ", ".join(earlier))
        for name in earlier:
            path = work_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    barrier()  # every rank starts once the old files are gone
    return state_path


def _network(model: C3D, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """What a training step runs: `model`, inside DistributedDataParallel under torchrun, compiled on CUDA when
    `train.compile` asks for it."""
    net: nn.Module = model
    if dist_info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and cfg.train.compile:
        return Compiled(net)
    if cfg.train.compile:
        log.info("torch.compile is only used on CUDA; training eagerly on the CPU")
    return net


def _resume(state_path: Path, model: C3D, optimizer: torch.optim.Optimizer, iters_per_epoch: int,
            dist_info: DistInfo, epochs: int) -> Progress:
    state = ckpt.load_state(state_path)
    if state["iters_per_epoch"] != iters_per_epoch:
        raise ConfigError(f"{state_path}: saved with {state['iters_per_epoch']} iterations per epoch, now "
                          f"{iters_per_epoch}; resume with the same data, batch size and number of processes")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"][dist_info.rank] if dist_info.rank < len(state["rng"]) else state["rng"][0])
    progress = Progress(state["iteration"], state["best_top1"], state["best_epoch"], state["last_val"])
    epoch, done = divmod(progress.iteration, iters_per_epoch)
    if "epoch_sums" in state:
        progress.epoch = ckpt.EpochSums(*state["epoch_sums"])
    elif done:
        log.warning("%s: written by an older c3dnet without the epoch's loss sums; epoch %d's mean loss will cover "
                    "its last %d iterations only", state_path, epoch + 1, iters_per_epoch - done)
    # Epochs are counted from 1, as in the epoch lines that follow.
    if progress.iteration >= epochs * iters_per_epoch:
        where = f"after its last epoch ({epochs}/{epochs}): nothing is left to train"
    elif done == 0:
        where = f"at the start of epoch {epoch + 1}/{epochs}"
    else:
        where = f"in epoch {epoch + 1}/{epochs}, {done} of its {iters_per_epoch} iterations done"
    log.info("resumed from %s %s (iteration %d of %d)", state_path, where, progress.iteration,
             epochs * iters_per_epoch)
    return progress


@dataclass(frozen=True)
class Step:
    """What one optimisation step uses: the network it runs (`net`: DDP and `Compiled` around `model`), the
    model whose gradients are clipped, the optimiser and its per-iteration learning rate."""

    net: nn.Module
    model: C3D
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    device: torch.device
    amp: bool
    clip_grad_norm: float

    def __call__(self, x: torch.Tensor, y: torch.Tensor, iteration: int) -> tuple[float, torch.Tensor]:
        """One SGD step at `iteration`'s learning rate; returns the lr and this process's (sum of the clips'
        losses, clips right, clips) as float64 on the device: sums, so that they add up across processes."""
        lr = self.schedule.apply(self.optimizer, iteration)
        with autocast(self.device, self.amp):
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y)
        clips = y.shape[0]
        stats = torch.stack([loss.detach().double() * clips, (logits.detach().argmax(1) == y).double().sum(),
                             torch.tensor(clips, dtype=torch.float64, device=y.device)])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        return lr, stats


def train_one_epoch(step: Step, batches: Prefetcher, epoch: int, progress: Progress, iters_per_epoch: int,
                    cfg: TrainConfig, metrics: MetricsLog, checkpoints: Checkpoints, dist_info: DistInfo,
                    bar: Any = None) -> float:
    """Train epoch `epoch` from `progress.iteration` (mid-epoch after a resume) to its end; returns the epoch's
    mean loss over all its clips (every process's, the iterations before a resume included).

    Every `train.log_every` iterations a "train" record (and the progress bar) gets the mean over those
    iterations' clips; the epoch's end gets an "epoch" record and a log line with the epoch's mean. Checkpoints
    every `train.checkpoint_every` iterations (mid-epoch states, with the epoch's sums so far; the epoch's end is
    the caller's). A loss that is not finite stops the run: the weights are bad in memory, never on disk.
    """
    step.net.train()
    done = progress.iteration - epoch * iters_per_epoch  # batches of this epoch already trained (resume)
    window = _Window()
    tick = time.perf_counter()
    while done < iters_per_epoch:
        checkpoints.check()
        x, y, data_time = batches.next()
        lr, stats = step(x, y, progress.iteration)
        # While the GPU runs this step: the next batch's copy and normalisation on a side stream. Only then
        # wait for the step's loss, so the GPU goes straight on to the next step.
        data_time += batches.prefetch()
        loss_sum, correct, clips = all_reduce_sum(stats).tolist()  # every process's clips; one copy to the host
        clips = int(clips)
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"the training loss is {loss_sum / clips} at epoch {epoch + 1}, iteration {progress.iteration}; "
                f"stopped. {checkpoints.last_good()}: lower optim.lr (or keep optim.clip_grad_norm set)"
            )
        progress.iteration += 1
        done += 1
        progress.epoch.add(loss_sum, correct, clips)
        window.add(loss_sum, correct, clips, data_time, time.perf_counter() - tick)
        if progress.iteration % cfg.train.log_every == 0 or done == iters_per_epoch:
            summary = window.summary()
            metrics.log({"kind": "train", "epoch": epoch + 1, "iteration": progress.iteration, "lr": lr, **summary})
            if bar is not None:
                bar.set_postfix_str(f"loss={summary['loss']:.3f} (mean of the last {window.n} it), lr={lr:.2e}, "
                                    f"clips/s={summary['clips_per_s']:.1f}, data wait={summary['data_wait']:.0%}")
            window = _Window()
        if bar is not None:
            bar.update(1)
        if cfg.train.checkpoint_every and progress.iteration % cfg.train.checkpoint_every == 0 \
                and done < iters_per_epoch:
            checkpoints.save(step.model, step.optimizer, progress, model_file=False)
            if dist_info.is_main:
                metrics.flush()
        tick = time.perf_counter()
    sums, progress.epoch = progress.epoch, ckpt.EpochSums()
    metrics.log({"kind": "epoch", "epoch": epoch + 1, "iteration": progress.iteration, "loss": sums.mean_loss,
                 "top1": sums.top1, "clips": sums.clips})
    if dist_info.is_main:
        log.info("epoch %d/%d: mean loss %.4f over its %d clips (train top-1 %.4f), lr %.3g", epoch + 1,
                 cfg.optim.epochs, sums.mean_loss, sums.clips, sums.top1, step.schedule.lr(progress.iteration - 1))
    return sums.mean_loss


def validate(model: C3D, loader: torch.utils.data.DataLoader, device: torch.device, amp: bool,
             cfg: TrainConfig) -> EvalResult:
    """One centre clip per video of the validation set, through the inference core (the model is left in eval
    mode; the next epoch puts it back in training mode)."""
    runner = ClipRunner(model, "logits", device, amp=amp, preprocess=model.preprocess,
                        channels_last=cfg.train.channels_last)
    return evaluate(runner, loader, average=cfg.train.average)


def _record_validation(result: EvalResult, epoch: int, progress: Progress, metrics: MetricsLog,
                       checkpoints: Checkpoints, model: C3D, val_name: str) -> None:
    progress.last_val = result.metrics()
    metrics.log({"kind": "val", "epoch": epoch + 1, "iteration": progress.iteration, **progress.last_val})
    log.info("epoch %d validation on %s: 1 centre clip per video, %d videos, top-1 %.4f, top-5 %.4f, mean class "
             "%.4f", epoch + 1, val_name, result.num_videos, result.top1, result.top5, result.mean_class_accuracy)
    if progress.best_top1 is None or result.top1 > progress.best_top1:
        progress.best_top1, progress.best_epoch = result.top1, epoch + 1
        checkpoints.save_best(model, {"epoch": epoch + 1, "iteration": progress.iteration, "val": progress.last_val,
                                      "val_set": val_name})


class _Window:
    """Running sums over the iterations between two log lines (losses and right answers summed over clips)."""

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
        clips = max(self.clips, 1)
        return {
            "loss": self.loss / clips,
            "top1": self.correct / clips,
            "clips": self.clips,
            "clips_per_s": self.clips / max(self.total_time, 1e-9),
            "data_wait": self.data_time / max(self.total_time, 1e-9),
        }
