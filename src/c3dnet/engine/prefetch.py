"""Training batches on the device, one step ahead (`Prefetcher`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from c3dnet.device import to_input
from c3dnet.preprocess import Preprocess


class Prefetcher:
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
