"""Training checkpoints: the model in the native weight format for users, and a resumable training state.

`<work_dir>/last.safetensors` (written at epoch ends) and `best.safetensors` (best validation top-1) are
ordinary native weight files (`c3d test --weights`, `c3dnet.weights.load_model`). `<work_dir>/last.state.pt`
(epoch ends and every `train.checkpoint_every` iterations) holds everything `--resume` needs in one file, so
nothing can disagree: model and optimiser tensors (SGD momentum), the iteration (which fixes the epoch and
the learning rate), the best metric, the current epoch's loss sums (so that a run resumed mid-epoch logs the
epoch's mean over all of it) and the RNG states of python, numpy, torch and CUDA of every rank.
There is no gradient-scaler state: CUDA runs bf16 autocast, whose range needs no loss scaling.
Every file is written atomically (temporary file, fsync, rename): a crash at any moment leaves the previous
complete checkpoint. The training loop copies the tensors to the host and leaves the writing to a thread, so
the disk does not hold up training. The state holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.engine.distributed import DistInfo, all_gather_objects, barrier
from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write

if TYPE_CHECKING:
    from c3dnet.engine.config import TrainConfig
    from c3dnet.model import C3D, C3DConfig
    from c3dnet.preprocess import Preprocess

STATE_FORMAT = "c3dnet-train-state-v1"


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy (legacy global), torch and CUDA as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - restoring the global state is the point
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically (tensors moved to the CPU)."""
    state = {"format": STATE_FORMAT, **state}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by `save_state` (weights_only: no code from the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no training state to resume from; start without --resume or pick the work dir "
                           "of an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise WeightsError(f"{path}: unreadable training state ({type(e).__name__}: {e}); delete it to restart "
                           "from the beginning") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise WeightsError(f"{path}: not a c3dnet training state (expected format {STATE_FORMAT})")
    return state


def host_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the host (never aliased, even on the CPU): a snapshot training may not
    change while it is being written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


@dataclass(frozen=True)
class ModelSnapshot:
    """A model's weights copied to the host, with what the native format records beside them."""

    state: dict[str, torch.Tensor]
    config: C3DConfig
    preprocess: Preprocess
    class_names: list[str] | None
    source_format: str

    @classmethod
    def of(cls, model: C3D) -> ModelSnapshot:
        from c3dnet.weights.native import NATIVE_FORMAT

        return cls(host_copy(model.state_dict()), model.config, model.preprocess, model.class_names,
                   getattr(model, "source_format", NATIVE_FORMAT))

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """The native weight file (`c3dnet.weights.save_native`), atomically."""
        from c3dnet.weights.native import save_native

        save_native(path, self.state, self.config, self.preprocess, self.class_names,
                    source_format=self.source_format, extra=extra)


class AsyncCheckpointer:
    """Writes checkpoints on one thread, in order, while training goes on.

    `save_model` takes a snapshot (tensors copied to the host) at once, or is given one; `save_state` is given
    host copies (`host_copy`, or a snapshot's tensors). The writing is queued, so a save costs the copy, not the
    disk (seconds a checkpoint on a virtual disk, with its fsyncs). Files are replaced atomically: until a write
    is complete the previous file stands. `check()` re-raises a write that failed (a full disk, say) without
    waiting; `wait()` waits for every queued write and re-raises its error; `close()` waits and stops the thread.
    At most `max_pending` snapshots wait in memory.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending  # snapshots held in memory at most; more waits for the oldest write
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def save_model(self, model: C3D | ModelSnapshot, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Queue `model` (as it is now, or a snapshot of it) as a native weight file at `path`."""
        snapshot = model if isinstance(model, ModelSnapshot) else ModelSnapshot.of(model)
        self._submit(snapshot.save, path, extra)

    def save_state(self, path: str | Path, state: dict[str, Any]) -> None:
        """Queue a training state at `path` (`save_state`); its tensors must be host copies training will not
        change (a `ModelSnapshot`'s, or `host_copy`'s)."""
        self._submit(save_state, path, state)

    def _submit(self, fn: Any, *args: Any) -> None:
        self.check()
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="c3d-checkpoint")
        self._pending.append(self._pool.submit(fn, *args))

    def check(self) -> None:
        """Re-raise the error of a write that has failed, without waiting for the others."""
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()

    def wait(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the queued writes and stop the writer thread; re-raise a failed write's error unless
        `raise_errors` is False (on the way out of another error, which must not be masked)."""
        try:
            if raise_errors:
                self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._pending = []


@dataclass
class EpochSums:
    """The running sums of the epoch in progress, over every clip of every process: the epoch's mean loss is
    `loss / clips` whatever the number of processes, the batch split or where a resume came in."""

    loss: float = 0.0  # sum of the clips' cross-entropy losses
    correct: float = 0.0  # clips whose top-1 was right
    clips: int = 0

    def add(self, loss: float, correct: float, clips: int) -> None:
        self.loss += loss
        self.correct += correct
        self.clips += clips

    @property
    def mean_loss(self) -> float:
        return self.loss / self.clips if self.clips else float("nan")

    @property
    def top1(self) -> float:
        return self.correct / self.clips if self.clips else float("nan")


@dataclass
class Progress:
    """Where a run stands: what a resume restores besides the tensors and the RNG states."""

    iteration: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    last_val: dict[str, Any] | None = None
    epoch: EpochSums = field(default_factory=EpochSums)


def describe_state(path: Path) -> str:
    """`path (iteration N: epoch E/EPOCHS, ...)`, read without loading the tensors; the bare path if the file
    cannot be read."""
    with contextlib.suppress(Exception):  # a message about another failure must not fail itself
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        iteration, per_epoch = int(state["iteration"]), int(state["iters_per_epoch"])
        epochs = int(state["config"]["optim"]["epochs"])
        epoch, done = divmod(iteration, per_epoch)
        where = f"end of epoch {epoch}/{epochs}" if done == 0 else \
            f"epoch {epoch + 1}/{epochs}, {done} of its {per_epoch} iterations done"
        return f"{path} (iteration {iteration}: {where})"
    return str(path)


class Checkpoints:
    """A run's checkpoint files, written by an `AsyncCheckpointer` on rank 0 (every rank's RNG state is gathered).

    `last.state.pt` (epoch ends and every `train.checkpoint_every` iterations: all a resume needs), with
    `last.safetensors` at epoch ends, and `best.safetensors` when validation improves.
    """

    def __init__(self, work_dir: Path, cfg: TrainConfig, iters_per_epoch: int, dist_info: DistInfo) -> None:
        self.work_dir, self.cfg, self.iters_per_epoch, self.dist = work_dir, cfg, iters_per_epoch, dist_info
        self.state_path = work_dir / "last.state.pt"
        self.writer = AsyncCheckpointer()

    def save(self, model: C3D, optimizer: torch.optim.Optimizer, progress: Progress, model_file: bool = True) -> None:
        """The training state, and (with `model_file`, at epoch ends) the native weights of `model`."""
        rng = all_gather_objects(rng_state())
        if self.dist.is_main:
            snapshot = ModelSnapshot.of(model)  # one host copy of the weights for both files
            if model_file:
                extra = {"epoch": progress.iteration // self.iters_per_epoch, "iteration": progress.iteration,
                         "val": progress.last_val}
                self.writer.save_model(snapshot, self.work_dir / "last.safetensors", extra)
            e = progress.epoch
            self.writer.save_state(self.state_path, {
                "model": snapshot.state,
                "optimizer": host_copy(optimizer.state_dict()),
                "iteration": progress.iteration,
                "iters_per_epoch": self.iters_per_epoch,
                "best_top1": progress.best_top1,
                "best_epoch": progress.best_epoch,
                "last_val": progress.last_val,
                "epoch_sums": [e.loss, e.correct, e.clips],
                "rng": rng,
                "config": self.cfg.to_dict(),
            })
        barrier()

    def save_best(self, model: C3D, extra: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.writer.save_model(model, self.work_dir / "best.safetensors", extra)

    def check(self) -> None:
        """Re-raise the error of a write that has failed (a full disk, say), without waiting."""
        self.writer.check()

    def last_good(self) -> str:
        """Where to go on from after a failure: the checkpoint on disk (once its writes are done), or none."""
        with contextlib.suppress(Exception):  # a failed write is reported by `check`, not here
            self.writer.wait()
        if self.state_path.is_file():
            return f"The last good checkpoint is {describe_state(self.state_path)} (resume from it with --resume)"
        return f"No checkpoint was written yet in {self.work_dir}: start again (without --resume)"

    def close(self, raise_errors: bool = True) -> None:
        self.writer.close(raise_errors)
