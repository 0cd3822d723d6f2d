"""Dynamic batching: one thread owns the model; concurrent requests' clips share its forward passes.

Requests (their decoding threads) hand clips to `DynamicBatcher.submit` and wait for their rows. The model thread
takes the oldest pending chunk, then keeps adding chunks of the same output for up to `max_wait_s` (a few
milliseconds) or until `max_batch` clips, runs one forward pass through a `ClipRunner`, and hands every chunk its
rows. The queue is bounded in clips: a submit that does not fit waits (backpressure on an admitted request's
decoder), and `saturated` tells the server to refuse new requests (503) instead of growing memory.

Example:
    >>> batcher = DynamicBatcher(model, device, max_batch=64)   # doctest: +SKIP
    >>> rows = batcher.submit(clips, "logits")                   # (k, 3, T, H, W) uint8 -> (k, C)  # doctest: +SKIP
    >>> batcher.close()                                                                           # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from c3dnet.inference.backends import OUTPUTS, Backend, as_backend
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import get_logger

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)


class Cancelled(Exception):
    """The request that owns these clips has gone (client disconnected, timed out, or the server is stopping)."""


@dataclass(eq=False)  # compared by identity: the queue removes chunks by `is`, never by their tensors
class _Chunk:
    """Clips (k, 3, T, H, W) of one request (its `cancel` event tells requests apart) for one output; `rows` is
    set to their (k, D) rows."""

    clips: torch.Tensor | None  # dropped once the forward pass has read it: only rows stay with a request
    output: str
    cancel: threading.Event | None
    rows: Future = field(default_factory=Future)
    size: int = 0

    def __post_init__(self) -> None:
        self.size = int(self.clips.shape[0])


class DynamicBatcher:
    """The model thread and its bounded clip queue.

    Args:
        backend: what runs the model (`inference.backends`), or a `C3D` (run on `device`) or `OnnxC3D`.
        device: where a PyTorch model given as such runs.
        max_batch: most clips in one forward pass.
        max_queue: most clips waiting; `submit` blocks past it and `saturated` turns true.
        max_wait_s: how long the model thread waits for more chunks once it has one.
        amp: bf16 autocast on CUDA.
        on_batch: called with each batch's size in clips, the requests it served and its seconds (metrics).
    """

    def __init__(self, backend: Backend | C3D | OnnxC3D, device: torch.device | str = "cpu", max_batch: int = 64,
                 max_queue: int = 256, max_wait_s: float = 0.005, amp: bool = True,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError(f"need 1 <= max_batch <= max_queue, got max_batch={max_batch}, max_queue={max_queue}")
        self.backend = as_backend(backend, device, "auto" if amp else "fp32")
        self.max_batch, self.max_queue, self.max_wait_s = max_batch, max_queue, max_wait_s
        self.on_batch = on_batch
        self._runners = {output: ClipRunner(self.backend, output) for output in OUTPUTS}
        self._pending: collections.deque[_Chunk] = collections.deque()
        self._queued = 0  # clips in _pending
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.clips = 0
        self._rate = 0.0  # clips per second of recent batches (EWMA), for Retry-After
        self._thread = threading.Thread(target=self._loop, name="c3d-model", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------- request side

    @property
    def queued(self) -> int:
        """Clips waiting for the model."""
        return self._queued

    @property
    def saturated(self) -> bool:
        return self._queued >= self.max_queue

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the recent rate (1 to 60)."""
        if self._rate <= 0:
            return 1
        return int(min(60, max(1, np.ceil(self._queued / self._rate))))

    def runner(self, output: str) -> ClipRunner:
        """The `ClipRunner` for one output ("logits", "pool5", "fc6", "fc7"); all share the model."""
        return self._runners[output]

    def submit(self, clips: torch.Tensor, output: str, cancel: threading.Event | None = None) -> np.ndarray:
        """Rows (k, D) of `clips` (k, 3, T, H, W) uint8 for `output`, computed in the model thread's batches."""
        return self.gather(self.enqueue(clips, output, cancel), cancel)

    def enqueue(self, clips: torch.Tensor, output: str, cancel: threading.Event | None = None) -> list[_Chunk]:
        """Queue `clips` (split into chunks of at most `max_batch`) and return at once; `gather` waits for them.

        Waits while the queue is full; raises `Cancelled` as soon as `cancel` is set (checked every 50 ms).
        """
        chunks = [_Chunk(part, output, cancel) for part in torch.split(clips, self.max_batch)]
        with self._cond:
            for chunk in chunks:
                while self._queued + chunk.size > self.max_queue and not self._closed:
                    self._check(cancel)
                    self._cond.wait(0.05)
                self._check(cancel)
                self._pending.append(chunk)
                self._queued += chunk.size
                self._cond.notify_all()
        return chunks

    def gather(self, chunks: list[_Chunk], cancel: threading.Event | None = None) -> np.ndarray:
        """The rows of queued chunks, in order, once the model thread has computed them."""
        rows = []
        for chunk in chunks:
            while True:
                self._check(cancel)
                try:
                    rows.append(chunk.rows.result(timeout=0.05))
                    break
                except TimeoutError:
                    continue
                except CancelledError:  # dropped by the model thread once `cancel` was set
                    raise Cancelled("the request was cancelled") from None
        return np.concatenate(rows)

    def _check(self, cancel: threading.Event | None) -> None:
        if self._closed:
            raise Cancelled("the server is shutting down")
        if cancel is not None and cancel.is_set():
            raise Cancelled("the request was cancelled")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the model thread; chunks still waiting get `Cancelled`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------- model thread

    def _take(self) -> list[_Chunk] | None:
        """The next batch: the oldest chunk plus later ones of the same output, gathered for up to max_wait_s."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                for chunk in self._pending:
                    chunk.rows.set_exception(Cancelled("the server is shutting down"))
                self._pending.clear()
                return None
            deadline = time.monotonic() + self.max_wait_s
            batch: list[_Chunk] = []
            size = 0
            while True:
                for chunk in list(self._pending):
                    if chunk.cancel is not None and chunk.cancel.is_set():  # nobody waits for these rows
                        self._pending.remove(chunk)
                        self._queued -= chunk.size
                        chunk.rows.cancel()
                    elif chunk.output == (batch[0].output if batch else chunk.output) and \
                            size + chunk.size <= self.max_batch:
                        self._pending.remove(chunk)
                        batch.append(chunk)
                        size += chunk.size
                left = deadline - time.monotonic()
                if size >= self.max_batch or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self._queued -= size
            self._cond.notify_all()  # room in the queue for waiting submitters
            return batch

    def _loop(self) -> None:
        while True:
            try:
                batch = self._take()
            except Exception as e:  # noqa: BLE001 - a bug here must not leave every request waiting forever
                log.exception("the model thread failed to form a batch")
                with self._cond:
                    for chunk in self._pending:
                        chunk.rows.set_exception(e)
                    self._pending.clear()
                    self._queued = 0
                    self._cond.notify_all()
                continue
            if batch is None:
                return
            if not batch:
                continue
            size = sum(c.size for c in batch)
            tick = time.perf_counter()
            clips = torch.cat([c.clips for c in batch])  # (size, 3, T, H, W)
            for chunk in batch:
                chunk.clips = None
            try:
                rows = self.runner(batch[0].output)(clips)  # (size, D)
            except Exception as e:  # noqa: BLE001 - the requests get the error; the model thread goes on
                log.exception("forward pass of %d clips failed", size)
                for chunk in batch:
                    chunk.rows.set_exception(e)
                continue
            seconds = time.perf_counter() - tick
            self.batches += 1
            self.clips += size
            rate = size / max(seconds, 1e-6)
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
            start = 0
            for chunk in batch:
                chunk.rows.set_result(rows[start:start + chunk.size])
                start += chunk.size
            if self.on_batch is not None:
                self.on_batch(size, len({id(c.cancel) for c in batch}), seconds)
