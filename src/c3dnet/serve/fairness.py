"""Sharing the decoding cores between requests: slots handed out in turn, and a guard that each request's decoding
ticks.

A server has `decode_workers` slots. A request decodes only while it holds one (`RequestGuard`); requests waiting
for a slot queue first come, first served (`FairSlots`), and a request that has held its slot for a time slice
(`QUANTUM_S`) while others wait gives it up and queues again behind them. So two long uploads cannot keep a short
one waiting until they are done: every request decoding at once gets an equal share of the cores. A request gives
its slot up, too, while it waits for the model (`RequestGuard.paused`), and gets its own CPU time counted
(`time.thread_time`: uploads are decoded on one thread each, so that count is all of it) against its budget.

The guard is what `c3dnet.data.video.Video` ticks on every packet and frame, the counting pass included, so a
request that was cancelled (timed out, or its client went away) stops within a frame and frees its slot.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

from c3dnet.data.records import LimitExceeded
from c3dnet.serve.batcher import Cancelled

QUANTUM_S = 0.1
"""How long a request decodes before giving its slot to a request that waits for one."""


class FairSlots:
    """`n` decoding slots, handed out first come, first served."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one decoding slot, got {n}")
        self.n = n
        self.free = n
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._queue)

    def acquire(self, cancel: threading.Event) -> None:
        """Wait for a slot in turn; `Cancelled` as soon as `cancel` is set (checked every 50 ms)."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (self.free > 0 and self._queue[0] is ticket):
                    if cancel.is_set():
                        raise Cancelled("the request was cancelled while it waited to be decoded")
                    self._cond.wait(0.05)
                self._queue.popleft()
                self.free -= 1
            except BaseException:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._cond.notify_all()  # the next in line may take another free slot

    def release(self) -> None:
        with self._cond:
            self.free += 1
            self._cond.notify_all()


class RequestGuard:
    """One request's share of the decoding slots, its cancel event and its CPU budget.

    Used as a context manager around the request's work (it holds a slot inside); `tick()` is called by the
    decoding for every packet and frame.

    Args:
        slots: the server's slots.
        cancel: set when the request times out or its client goes away; the batcher checks it too.
        cpu_budget_s: most CPU seconds the request's decoding may take (None: no budget).
        name: the upload's name, for messages.
    """

    def __init__(self, slots: FairSlots, cancel: threading.Event, cpu_budget_s: float | None, name: str) -> None:
        self.slots, self.cancel, self.cpu_budget_s, self.name = slots, cancel, cpu_budget_s, name
        self.held = False
        self._cpu_start = 0.0
        self._slice_end = 0.0

    def __enter__(self) -> RequestGuard:
        self._take()
        self._cpu_start = time.thread_time()
        return self

    def __exit__(self, *exc) -> None:
        self._give()

    def _take(self) -> None:
        self.slots.acquire(self.cancel)
        self.held = True
        self._slice_end = time.monotonic() + QUANTUM_S

    def _give(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    @property
    def cpu_s(self) -> float:
        """CPU seconds this request's thread has used since it started."""
        return time.thread_time() - self._cpu_start

    def tick(self) -> None:
        """Stop if cancelled or past the CPU budget; give the slot to a waiting request once the slice is over."""
        if self.cancel.is_set():
            raise Cancelled("the request was cancelled")
        if self.cpu_budget_s is not None and self.cpu_s > self.cpu_budget_s:
            raise LimitExceeded(f"{self.name}: decoding it takes more than this server's budget of "
                                f"{self.cpu_budget_s:g} CPU seconds per request (--max-cpu-seconds); send a "
                                "shorter or smaller video")
        if time.monotonic() >= self._slice_end and self.slots.waiting:
            self._give()
            self._take()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Without a slot while waiting for something else (the model thread's rows)."""
        self._give()
        try:
            yield
        finally:
            self._take()
