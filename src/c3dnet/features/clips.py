"""Videos to clips, clips to feature rows: streaming decode with a bounded frame buffer, and the model runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from c3dnet.data import sampling
from c3dnet.errors import DataError
from c3dnet.features.manifest import OUTPUTS
from c3dnet.preprocess import Preprocess

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D


# --------------------------------------------------------------------------------------------------- the model


class ClipRunner:
    """uint8 RGB clips (B, 3, T, crop, crop) -> float32 rows (B, D) of one output of a C3D or an ONNX model.

    Normalisation follows the model's own `preprocess`; a PyTorch model runs on `device` (bf16 autocast and
    channels_last_3d on CUDA when `amp`), optionally through torch.compile (`compile`, see
    `engine.device.InferenceCompiled`), an `OnnxC3D` through ONNX Runtime.
    """

    def __init__(self, model: C3D | OnnxC3D, output: str = "fc6", device: torch.device | str = "cpu",
                 amp: bool = True, compile: bool = False) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model, self.output, self.amp = model, output, amp
        self.device = torch.device(device)
        self.preprocess: Preprocess = model.preprocess
        self.is_onnx = not isinstance(model, torch.nn.Module)
        if not self.is_onnx:
            from c3dnet.engine.device import InferenceCompiled, prepare_model

            self.model = prepare_model(model.eval(), self.device)
            self._forward = _Output(self.model, output)
            if compile:
                self._forward = InferenceCompiled(self._forward)
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
        from c3dnet.data.transforms import normalize

        if self.is_onnx:
            return PendingRows(self.model.run(normalize(clips, self.preprocess), [self.output])[0]
                               .astype(np.float32))
        from c3dnet.engine.device import inference_context, to_input

        with inference_context(self.device, self.amp):
            x = to_input(clips, self.preprocess, self.device)  # (B, 3, T, H, W) float32 on the device
            out = self._forward(x).float()
        if self.device.type != "cuda":
            return PendingRows(out.numpy())
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingRows(host, done, keep=(x, out))


class _Output(torch.nn.Module):
    """One output of a C3D as a module's forward: what torch.compile compiles."""

    def __init__(self, model: C3D, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.output == "logits" else self.model.forward_features(x, self.output)


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


# --------------------------------------------------------------------------------------------------- clips


def clip_starts(num_frames: int, preprocess: Preprocess, stride: int) -> np.ndarray:
    """Start frames of the sliding clips of a video: 0, stride, 2*stride, ... while a clip fits; [0] if none fits."""
    return sampling.sliding_start_frames(num_frames, preprocess.clip_len, stride, preprocess.frame_interval)


def _crop_chunk(chunk: np.ndarray, crop: int, path: Path) -> np.ndarray:
    """Centre crop of decoded frames (n, H, W, 3), offsets rounded down as `transforms.center_crop` does.

    A view, not a copy: the frames are copied once, when they are stacked into clips. numpy rather than torch:
    this runs in decoder processes beside the model's, which need no more threads.
    """
    h, w = chunk.shape[1:3]
    if h < crop or w < crop:
        raise DataError(f"{path}: frames of {h}x{w} after resizing are smaller than the {crop}x{crop} crop; "
                        "the weights' preprocessing does not fit this video")
    top, left = (h - crop) // 2, (w - crop) // 2
    return chunk[:, top:top + crop, left:left + crop]  # (n, crop, crop, 3)


def clip_frames(path: str | os.PathLike[str], preprocess: Preprocess, stride: int, num_frames: int,
                size_hw: tuple[int, int] | None, chunk: int = 64, autorotate: bool = True,
                ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(clip number, its T centre-cropped frames (crop, crop, 3)) for each sliding clip, decoding the video once.

    The frames are views into decoded chunks, valid until the next clip is asked for: stack them (into a
    buffer of your own, say) before going on. Only frames that a pending clip still needs are kept (at most
    about one clip span plus one chunk), so memory does not grow with the video's length. Short videos (fewer
    frames than a clip) wrap around, as `sampling.clip_indices` does.
    """
    from c3dnet.data.decode import iter_frames

    path = Path(path)
    starts = clip_starts(num_frames, preprocess, stride)
    idx = sampling.clip_indices(starts, num_frames, preprocess.clip_len, preprocess.frame_interval)  # (K, T)
    first_needed, last_needed = idx.min(axis=1), idx.max(axis=1)
    buffer: dict[int, np.ndarray] = {}
    k, j = 0, 0
    for frames in iter_frames(path, size_hw=size_hw, chunk=chunk, autorotate=autorotate):
        cropped = _crop_chunk(frames, preprocess.crop_size, path)  # (n, crop, crop, 3)
        for t in range(cropped.shape[0]):
            if k < len(idx) and j >= first_needed[k]:
                buffer[j] = cropped[t]
            while k < len(idx) and last_needed[k] <= j:
                yield k, [buffer[int(i)] for i in idx[k]]
                k += 1
                if k < len(idx):
                    for old in [i for i in buffer if i < first_needed[k]]:
                        del buffer[old]
            j += 1
    if k != len(idx):
        raise DataError(f"{path}: decoded {j} frames but the container lists {num_frames}; the file is corrupt "
                        "or truncated: re-encode or remove it (or use --skip-bad)")


def stream_clips(path: str | os.PathLike[str], preprocess: Preprocess, stride: int, num_frames: int,
                 size_hw: tuple[int, int] | None, chunk: int = 64, autorotate: bool = True,
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """(clip number, uint8 clip (3, T, crop, crop)) for each sliding clip, decoding the video once, in order.

    `clip_frames` stacked into channel-first tensors; memory stays bounded as there.
    """
    for k, frames in clip_frames(path, preprocess, stride, num_frames, size_hw, chunk, autorotate):
        clip = np.stack(frames)  # (T, crop, crop, 3)
        yield k, torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))  # (3, T, crop, crop)
