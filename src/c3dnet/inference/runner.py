"""The inference core: uint8 clips in, rows of one model output out, through a `Backend`, for every consumer.

`ClipRunner` is one output of one backend: `runner(clips)` gives rows, `runner.submit(clips)` queues a batch on
the GPU while the caller prepares the next (a `PendingRows`). `c3d test` (through `engine.evaluate`), `c3d
predict`, `c3d extract`, `c3d serve` and training's validation all run models through it. Given a model instead of
a backend (a `C3D`, an `OnnxC3D`), it makes the backend itself (`backends.as_backend`).

Example:
    >>> runner = ClipRunner(load_backend("c3d.safetensors", "cuda"), "fc6")   # doctest: +SKIP
    >>> rows = runner(clips_uint8)       # (B, 3, 16, 112, 112) uint8 -> (B, 4096) float32    # doctest: +SKIP
    >>> pending = runner.submit(clips)   # queued on the GPU; prepare the next batch, then:     # doctest: +SKIP
    >>> rows = pending.result()                                                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.inference.backends import OUTPUTS, Backend, PendingRows, as_backend, output_dim
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)

__all__ = ["OUTPUTS", "ClipRunner", "PendingRows"]


class ClipRunner:
    """uint8 RGB clips (B, 3, T, crop, crop) -> float32 rows (B, D) of one output of a backend.

    Args:
        model: a `Backend` (from `load_backend`), or a `C3D` / `OnnxC3D` to wrap in one.
        output: "logits", "pool5", "fc6" or "fc7".
        device, amp, compile, channels_last: how to run a model given as such (`TorchBackend`): its device, bf16
            autocast on CUDA, torch.compile, channels_last_3d. A backend keeps its own.
        preprocess: the normalisation (mean, std, channel order); the backend's own when None.
    """

    def __init__(self, model: Backend | C3D | OnnxC3D, output: str = "fc6", device: torch.device | str = "cpu",
                 amp: bool = True, compile: bool = False, preprocess: Preprocess | None = None,
                 channels_last: bool = True) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.backend: Backend = as_backend(model, device, "auto" if amp else "fp32", compile, channels_last)
        self.output = output
        self.preprocess: Preprocess = preprocess if preprocess is not None else self.backend.preprocess
        self.dim = output_dim(self.backend, output)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def clip_len(self) -> int:
        return self.preprocess.clip_len

    @property
    def class_names(self) -> list[str] | None:
        return self.backend.class_names

    @property
    def asynchronous(self) -> bool:
        """Whether `submit` returns before the rows are computed (a GPU)."""
        return self.backend.asynchronous

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        return self.submit(clips).result()

    def submit(self, clips: torch.Tensor) -> PendingRows:
        """Queue a batch and return at once; `.result()` waits for its rows (see `Backend.submit`)."""
        return self.backend.submit(clips, self.output, self.preprocess)
