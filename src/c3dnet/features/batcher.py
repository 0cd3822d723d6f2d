"""Fixed-size batches of clips from many videos, run through the model while the next batch is filled.

`Batcher` owns the batch buffers (pinned on a GPU, two of them so the model runs on one while the other fills),
the rows of the batches in flight, and where each row goes: `add` stages clips, `flush` runs a last partial
batch, `drain` waits for every batch. Rows reach their `VideoJob`s through `on_row(job, clip, row)`, and
`after_batch()` follows each batch's rows.

With several crops a clip is that many consecutive views (`inference.clips`), and a batch holds whole clips:
`batch_size` views rounded down to a multiple of `group` (at least one clip), so the crops of a clip go through
the model in one batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from c3dnet.features.writers import VideoJob
from c3dnet.inference.runner import ClipRunner, PendingRows

Entry = tuple[VideoJob | None, int]  # a batch row's video (None: dropped) and clip (view) number


class Batcher:
    """Clips in, rows out, in batches of `batch_size` that mix videos.

    Every batch has the same shape (padded with copies of its first clip): kernels, and so the last float bits,
    do not change with the batch size, which makes a resumed extraction bit-identical; static shapes also suit
    cuDNN autotuning. Clips are copied with numpy, on this thread alone: a torch copy this large would wake every
    intra-op thread, whose spinning takes cores from the decoder processes (measured: twice the CPU time).
    """

    def __init__(self, runner: ClipRunner, batch_size: int, clip_shape: tuple[int, ...],
                 on_row: Callable[[VideoJob, int, np.ndarray], None], after_batch: Callable[[], None],
                 group: int = 1) -> None:
        self.runner, self.on_row, self.after_batch = runner, on_row, after_batch
        self.batch_size = max(group, batch_size // group * group)  # whole clips of `group` crops
        # On a GPU two batch buffers, pinned: the model runs on one while the next is filled (`ClipRunner.submit`).
        self.depth = 2 if runner.asynchronous else 1
        pinned = runner.asynchronous and runner.device.type == "cuda"  # (a test's queued runner runs on the CPU)
        self.buffers = [torch.empty((self.batch_size, *clip_shape), dtype=torch.uint8, pin_memory=pinned)
                        for _ in range(self.depth)]
        self.staging = [b.numpy() for b in self.buffers]
        self.filling = 0  # the buffer being filled; `batch` lists the (job, clip number) of its filled rows
        self.batch: list[Entry] = []
        self.in_flight: deque[tuple[PendingRows, list[Entry]]] = deque()

    def add(self, job: VideoJob, first: int, clips: np.ndarray) -> None:
        """Stage clips `first`, `first + 1`, ... of `job` (n, T, crop, crop, 3); full batches are run."""
        j = 0
        while j < clips.shape[0]:  # as many rows at a time as the batch has room for
            n = min(clips.shape[0] - j, self.batch_size - len(self.batch))
            self.staging[self.filling][len(self.batch):len(self.batch) + n] = clips[j:j + n]
            self.batch.extend((job, first + j + m) for m in range(n))
            j += n
            if len(self.batch) == self.batch_size:
                self._run()

    def drop(self, job: VideoJob) -> None:
        """Rows of `job` already staged (or in flight) are computed, but go nowhere (the video failed)."""
        for entries in (self.batch, *(entries for _, entries in self.in_flight)):
            for n, (other, _) in enumerate(entries):
                if other is job:
                    entries[n] = (None, 0)

    def flush(self) -> None:
        """Run the partial batch being filled, if any."""
        if self.batch:
            self._run()

    def drain(self) -> None:
        """Wait for every batch in flight and hand out its rows."""
        while self.in_flight:
            self._finish_one()

    def clear(self) -> None:
        """Forget the batches in flight (an error: their rows are not wanted)."""
        self.in_flight.clear()

    def _run(self) -> None:
        # (B, T, H, W, 3) viewed as (B, 3, T, H, W) is the model's channels_last_3d layout already; the batch is
        # staged in pinned memory on a GPU, so its copy there is one fast DMA.
        staged = self.staging[self.filling]
        staged[len(self.batch):] = staged[0]
        self.in_flight.append((self.runner.submit(self.buffers[self.filling].permute(0, 4, 1, 2, 3)),
                               self.batch.copy()))
        self.batch.clear()
        self.filling = (self.filling + 1) % self.depth
        while len(self.in_flight) >= self.depth:  # the buffer filled next is free once its last batch is done
            self._finish_one()

    def _finish_one(self) -> None:
        pending, entries = self.in_flight.popleft()
        rows = pending.result()  # (B, D)
        for (job, k), row in zip(entries, rows):
            if job is not None:  # None: a video that failed after some of its clips were staged
                self.on_row(job, k, row)
        self.after_batch()
