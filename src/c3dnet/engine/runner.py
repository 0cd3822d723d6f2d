"""The inference core: uint8 clips in, rows of one model output out, on any device, for every consumer.

`ClipRunner` owns what running the model needs: the device, bf16 autocast and channels_last_3d on CUDA, the
normalisation by an explicit `Preprocess`, torch.compile (`Compiled`), and queueing a batch on the GPU while the
caller prepares the next (`submit` returns a `PendingRows`). `c3d test` (through `engine.evaluate`), `c3d predict`,
`c3d extract` and training's validation all run models through it; an ONNX model (`export.OnnxC3D`) runs through
ONNX Runtime behind the same interface. Training's batches reach the device through `Prefetcher`, which copies and
normalises the next batch on a side stream while the current step runs.

Example:
    >>> runner = ClipRunner(model, "fc6", torch.device("cuda"))     # doctest: +SKIP
    >>> rows = runner(clips_uint8)       # (B, 3, 16, 112, 112) uint8 -> (B, 4096) float32    # doctest: +SKIP
    >>> pending = runner.submit(clips)   # queued on the GPU; prepare the next batch, then:     # doctest: +SKIP
    >>> rows = pending.result()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from c3dnet.engine.device import inference_context, prepare_model, to_input
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)

OUTPUTS = ("logits", "pool5", "fc6", "fc7")
"""What a runner can return: the class logits, or the features of one layer (after ReLU)."""


class Compiled(nn.Module):
    """`module` through torch.compile, falling back to eager mode only when the first call fails.

    torch.compile raises its errors lazily, at the first call: then (no compiler, an unsupported op) the module runs
    eagerly from then on, with a warning. A failure at any later call is the model's own and is raised.

    With `pad_batches` (inference), the graph is compiled for the first batch's size: smaller batches are padded
    to it with the same strides, so a last short batch does not recompile, and larger ones run eagerly.
    `python benchmarks/bench_model.py --paths naive,c3dnet,compile` measures the gain.
    """

    def __init__(self, module: nn.Module, pad_batches: bool = False, mode: str | None = None) -> None:
        super().__init__()
        self.eager = module
        self.__dict__["_compiled"] = torch.compile(module, mode=mode)  # not a submodule: no second state_dict copy
        self.pad_batches = pad_batches
        self.batch: int | None = None  # the batch size of the first call, once it has succeeded
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(x)
        if self.batch is None:
            try:
                out = self._compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure at the first call falls back
                log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, e)
                self.failed = True
                return self.eager(x)
            self.batch = x.shape[0]
            return out
        n = x.shape[0]
        if not self.pad_batches or n == self.batch:
            return self._compiled(x)
        if n > self.batch:
            return self.eager(x)
        # Same shape and strides as the compiled batch: no recompile.
        layout = torch.channels_last_3d if x.ndim == 5 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
        padded = torch.empty((self.batch, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
        padded[:n] = x
        padded[n:] = x[:1]
        return self._compiled(padded)[:n]


class _Output(nn.Module):
    """One output of a C3D as a module's forward: what torch.compile compiles."""

    def __init__(self, model: C3D, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.output == "logits" else self.model.forward_features(x, self.output)


class ClipRunner:
    """uint8 RGB clips (B, 3, T, crop, crop) -> float32 rows (B, D) of one output of a C3D or an ONNX model.

    Args:
        model: a `C3D` (run on `device`) or an `OnnxC3D` (run by ONNX Runtime on the CPU).
        output: "logits", "pool5", "fc6" or "fc7".
        device: where a PyTorch model runs; the model is moved there (channels_last_3d unless `channels_last` is
            False) and put in eval mode.
        amp: bf16 autocast on CUDA.
        compile: run a PyTorch model through `Compiled` (batches padded to the first one's size).
        preprocess: the normalisation (mean, std, channel order); the model's own when None.
        channels_last: the memory format of model and input (`engine.device.prepare_model`).
    """

    def __init__(self, model: C3D | OnnxC3D, output: str = "fc6", device: torch.device | str = "cpu",
                 amp: bool = True, compile: bool = False, preprocess: Preprocess | None = None,
                 channels_last: bool = True) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model, self.output, self.amp, self.channels_last = model, output, amp, channels_last
        self.device = torch.device(device)
        self.preprocess: Preprocess = preprocess if preprocess is not None else model.preprocess
        self.is_onnx = not isinstance(model, nn.Module)
        if not self.is_onnx:
            self.model = prepare_model(model.eval(), self.device, channels_last)
            self._forward: nn.Module = _Output(self.model, output)
            if compile:
                self._forward = Compiled(self._forward, pad_batches=True)
        elif compile:
            raise ValueError("compile applies to PyTorch models; an ONNX model runs through ONNX Runtime")
        self.dim = model.num_classes if output == "logits" else model.feature_dims[output]

    @property
    def clip_len(self) -> int:
        return self.preprocess.clip_len

    @property
    def asynchronous(self) -> bool:
        """Whether `submit` returns before the rows are computed (a PyTorch model on CUDA)."""
        return self.device.type == "cuda" and not self.is_onnx

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        return self.submit(clips).result()

    def submit(self, clips: torch.Tensor) -> PendingRows:
        """Queue a batch on the device and return at once; `.result()` waits for its rows.

        On CUDA the copy in, the model and the copy of the rows into pinned memory are queued on the current
        stream, so the caller can prepare the next batch meanwhile; `clips` (pinned, for a truly asynchronous
        copy) must stay untouched until `.result()` has returned. Elsewhere the rows are computed here.
        Any memory layout of `clips` is accepted: (B, 3, T, H, W) viewed from a (B, T, H, W, 3) buffer is
        already channels_last_3d, so it is copied as it is.
        """
        if self.is_onnx:
            from c3dnet.data.transforms import normalize

            return PendingRows(self.model.run(normalize(clips, self.preprocess), [self.output])[0]
                               .astype(np.float32))
        with inference_context(self.device, self.amp):
            x = to_input(clips, self.preprocess, self.device, self.channels_last)  # (B, 3, T, H, W) float32
            out = self._forward(x).float()
        if self.device.type != "cuda":
            return PendingRows(out.numpy())
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingRows(host, done, keep=(x, out))


class PendingRows:
    """The rows of a batch that `ClipRunner.submit` queued: `.result()` waits for them (at most once)."""

    def __init__(self, rows: np.ndarray | torch.Tensor, done: torch.cuda.Event | None = None,
                 keep: tuple[torch.Tensor, ...] = ()) -> None:
        self._rows, self._done, self._keep = rows, done, keep  # `keep`: device memory in use until done

    def result(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
            self._done, self._keep = None, ()
        return self._rows.numpy() if isinstance(self._rows, torch.Tensor) else self._rows


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
