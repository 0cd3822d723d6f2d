"""Videos to clips: streaming decode with a bounded frame buffer (the model runs in `engine.runner`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from c3dnet.data import sampling
from c3dnet.data.transforms import center_offsets
from c3dnet.errors import DataError
from c3dnet.metrics import l2_normalize
from c3dnet.preprocess import Preprocess

# --------------------------------------------------------------------------------------------------- clips


def clip_starts(num_frames: int, preprocess: Preprocess, stride: int) -> np.ndarray:
    """Start frames of the sliding clips of a video: 0, stride, 2*stride, ... while a clip fits; [0] if none fits."""
    return sampling.sliding_start_frames(num_frames, preprocess.clip_len, stride, preprocess.frame_interval)


def _crop_chunk(chunk: np.ndarray, crop: int, path: Path) -> np.ndarray:
    """Centre crop of decoded frames (n, H, W, 3), at `transforms.center_offsets`.

    A view, not a copy: the frames are copied once, when they are stacked into clips. numpy rather than torch:
    this runs in decoder processes beside the model's, which need no more threads.
    """
    h, w = chunk.shape[1:3]
    if h < crop or w < crop:
        raise DataError(f"{path}: frames of {h}x{w} after resizing are smaller than the {crop}x{crop} crop; "
                        "the weights' preprocessing does not fit this video")
    top, left = center_offsets(h, w, crop)
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
    from c3dnet.data.decode import ArrayVideo, iter_frames

    path = path if isinstance(path, ArrayVideo) else Path(path)
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


def mean_row(total: np.ndarray, count: int, l2: bool) -> np.ndarray:
    """A video's feature (D,) from the float64 sum of its `count` clip rows: the mean, then L2 with `l2` (the
    paper's order), as float32."""
    feats = (total / max(count, 1)).astype(np.float32)
    return l2_normalize(feats).astype(np.float32) if l2 else feats


def finish_rows(rows: np.ndarray, video_mean: bool, l2: bool) -> np.ndarray:
    """A video's clip rows (N, D) as `c3d extract` stores them: float32 rows, or their mean (D,) with
    `video_mean`; L2-normalised (each row, or the mean after averaging, as the paper) with `l2`."""
    if video_mean:
        return mean_row(np.asarray(rows, dtype=np.float64).sum(axis=0), len(rows), l2)
    return l2_normalize(rows).astype(np.float32) if l2 else np.asarray(rows, dtype=np.float32)
