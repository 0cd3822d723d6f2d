"""Videos to clips: streaming decode with a bounded frame buffer (the model runs in `inference.runner`).

A clip is seen by the model through one or more views (`CropSet`): its centre crop, or torchvision's five or ten
crops, all cut from the same decoded and resized frames (one decode, whatever the number of crops). View j of clip
k is number k * len(crops) + j, so a clip's views are consecutive and, without crops, a view's number is its clip's.

Example:
    >>> [v.name for v in CropSet("10", "urdmu").views(128, 171, 112)][:6]
    ['top_left', 'top_right', 'center', 'bottom_left', 'bottom_right', 'flip_top_left']
    >>> v = CropSet("10").views(128, 171, 112)[9]     # the centre of the mirrored frames: columns 30..141, mirrored
    >>> v.name, v.top, v.left, v.flip
    ('flip_center', 8, 30, True)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import torch

from c3dnet.data import sampling
from c3dnet.data.decode import FrameCountChanged, as_source, iter_frames, video_times
from c3dnet.data.timing import FrameTimes, resample
from c3dnet.data.transforms import FIVE_CROP, five_crop_offsets
from c3dnet.errors import DataError
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

CROP_COUNTS = {"center": 1, "5": 5, "10": 10}
"""The views of each clip: its centre crop, torchvision's `five_crop` or its `ten_crop` (the five, then the same
five of the horizontally mirrored frames)."""

CROP_ORDERS = {"tencrop": FIVE_CROP, "urdmu": ("top_left", "top_right", "center", "bottom_left", "bottom_right")}
"""The five crops' order: torchvision's `TenCrop` (RTFM, MGFN), or UR-DMU's extraction script's; with ten crops,
the mirrored five follow in the same order."""

# --------------------------------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class CropView:
    """One view of a clip: the `size` x `size` square at (`top`, `left`) of the resized frames, mirrored left to
    right when `flip`.

    `name` is the crop's place as torchvision's `five_crop` names it; with `flip`, its place on the mirrored frames
    ("flip_top_left" is the top-left corner of the mirrored frames: the top-right square here, mirrored). The box
    is always where its pixels are in the resized frames, before mirroring.
    """

    name: str
    top: int
    left: int
    size: int
    flip: bool = False

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """This view of one frame (H, W, 3): a numpy view, copied only when the clip is stacked."""
        view = frame[self.top:self.top + self.size, self.left:self.left + self.size]  # (size, size, 3)
        return view[:, ::-1] if self.flip else view

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CropSet:
    """Which views of each clip the model sees (`CROP_COUNTS`), in which order (`CROP_ORDERS`).

    The crops are cut from the frames as the weights' preprocessing resizes them, at its crop size: the corners
    by torchvision's `five_crop` arithmetic, the centre by `transforms.center_offsets`, and with "10" the same
    five cut from the horizontally mirrored frames (torchvision's `ten_crop`).
    """

    crops: str = "center"
    order: str = "tencrop"

    def __post_init__(self) -> None:
        if self.crops not in CROP_COUNTS or self.order not in CROP_ORDERS:
            raise ValueError(f"crops must be one of {list(CROP_COUNTS)} and order one of {list(CROP_ORDERS)}, got "
                             f"{self.crops!r} and {self.order!r}")

    def __len__(self) -> int:
        return CROP_COUNTS[self.crops]

    def views(self, height: int, width: int, size: int) -> list[CropView]:
        """The views of `height` x `width` frames, cut at `size` x `size` (ValueError when they do not fit)."""
        offsets = five_crop_offsets(height, width, size)
        if self.crops == "center":
            return [CropView("center", *offsets["center"], size)]
        names = CROP_ORDERS[self.order]
        views = [CropView(n, *offsets[n], size) for n in names]
        if self.crops == "10":  # column x of the mirrored frames is column W - 1 - x here
            views += [CropView(f"flip_{n}", offsets[n][0], width - size - offsets[n][1], size, True) for n in names]
        return views


def frame_views(path: object, height: int, width: int, preprocess: Preprocess,
                crops: CropSet | None = None) -> list[CropView]:
    """The views of a video's resized `height` x `width` frames; `DataError` naming it when the crop does not fit."""
    crop = preprocess.crop_size
    if height < crop or width < crop:
        raise DataError(f"{path}: frames of {height}x{width} after resizing are smaller than the {crop}x{crop} "
                        f"crop; crops must fit the resized frames (at most {min(height, width)} here): the weights' "
                        "preprocessing does not fit this video")
    return (crops or CropSet()).views(height, width, crop)


# --------------------------------------------------------------------------------------------------- clips


def clip_starts(num_frames: int, preprocess: Preprocess, stride: int) -> np.ndarray:
    """Start frames of the sliding clips of a video: 0, stride, 2*stride, ... while a clip fits; [0] if none fits."""
    return sampling.sliding_start_frames(num_frames, preprocess.clip_len, stride, preprocess.frame_interval)


@dataclass(frozen=True)
class ClipPlan:
    """Which source frames each sliding clip of a video takes, and when they are shown.

    Without `fps` the clips slide over the video's own frames. With `fps` the video is first sampled at that
    rate by presentation time (`data.timing.resample`), and the clips slide over the sampled frames; `frame_map`
    then gives the source frame of each sampled one.

    Attributes:
        num_frames: frames in the source video (FFmpeg's count).
        starts: clip starts, in sampled frames (source frames without `fps`).
        indices: (num_clips, T) source frame of each clip frame.
        sampled: (num_clips, T) sampled frame of each clip frame (equal to `indices` without `fps`).
        times: the source frames' times (None for a frame folder without them, when `fps` is not asked for).
        fps: the sampling rate, or None.
        num_sampled: frames after sampling (`num_frames` without `fps`).
    """

    num_frames: int
    starts: np.ndarray
    indices: np.ndarray
    sampled: np.ndarray
    times: FrameTimes | None
    fps: Fraction | None
    num_sampled: int

    @classmethod
    def of(cls, video: str | os.PathLike[str], num_frames: int, preprocess: Preprocess, stride: int,
           fps: Fraction | None = None, source_fps: Fraction | None = None) -> ClipPlan:
        if fps is None:
            try:
                times = video_times(video, source_fps)
            except DataError:
                times = None  # a frame folder without timestamps: rows get frame numbers, no times
            frame_map = None
        else:
            times = video_times(video, source_fps)
            if times.num_frames != num_frames:
                raise DataError(f"{video}: {times.num_frames} frame times for {num_frames} frames; "
                                "the file is corrupt: re-encode it")
            frame_map = resample(times, fps)
            if len(frame_map) > num_frames + 1:
                _warn_repeats(video, fps, times)
        n = num_frames if frame_map is None else len(frame_map)
        starts = clip_starts(n, preprocess, stride)
        sampled = sampling.clip_indices(starts, n, preprocess.clip_len, preprocess.frame_interval)  # (K, T)
        indices = sampled if frame_map is None else frame_map[sampled]
        return cls(num_frames, starts, indices, sampled, times, fps, n)

    def spans(self, groups: list[np.ndarray] | None = None) -> np.ndarray:
        """(rows, 4) float64 [first source frame, last source frame, start s, end s] of each output row: one per
        clip, or per group of clip numbers (a segment, the video mean). Times are NaN where unknown."""
        groups = groups if groups is not None else [np.array([k]) for k in range(len(self.indices))]
        out = np.full((len(groups), 4), np.nan)
        for r, g in enumerate(groups):
            src, smp = self.indices[g], self.sampled[g]
            out[r, 0], out[r, 1] = src.min(), src.max()
            if self.fps is not None:  # sampled frame j is shown from j / fps to (j + 1) / fps
                out[r, 2], out[r, 3] = smp.min() / self.fps, (smp.max() + 1) / self.fps
            elif self.times is not None:
                t, last = self.times, int(src.max())
                end = t.ts[last + 1] if last + 1 < t.num_frames else t.end
                out[r, 2], out[r, 3] = t.seconds(t.ts[int(src.min())]), t.seconds(end)
        return out


REPEAT_WARNINGS = 5
"""Videos sampled above their own rate that are each named in a warning; past them, one line says there are more."""

_repeats_warned = 0


def _warn_repeats(video: object, fps: Fraction, times: FrameTimes) -> None:
    """Sampling above a video's own rate repeats frames: said for the first REPEAT_WARNINGS videos of a process,
    each by name, then once for all the others (a dataset would say it for every video)."""
    global _repeats_warned
    _repeats_warned += 1
    if _repeats_warned > REPEAT_WARNINGS + 1:
        return
    if _repeats_warned == REPEAT_WARNINGS + 1:
        log.warning("more videos are sampled above their own rate with --fps %s; they are not listed", fps)
        return
    rate = (times.num_frames / float(times.seconds(times.end))) if times.end else 0.0
    log.warning("%s: --fps %s is above the video's own rate (%.3g fps): frames are repeated to fill it", video, fps,
                rate)


def clip_frames(path: str | os.PathLike[str], preprocess: Preprocess, stride: int, num_frames: int,
                size_hw: tuple[int, int] | None, chunk: int = 64, autorotate: bool = True,
                indices: np.ndarray | None = None,
                crops: CropSet | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(view number, its T frames (crop, crop, 3)) for each view of each sliding clip, decoding the video once.

    A clip's views are those of `crops` (its centre crop alone by default), all cut from the same decoded frames;
    view j of clip k is number k * len(crops) + j (without crops, the clip's number). The frames are numpy views
    into decoded chunks, valid until the next clip is asked for: stack them (into a buffer of your own, say)
    before going on. Only frames that a pending clip still needs are kept (at most about one clip span plus one
    chunk), so memory does not grow with the video's length. Short videos (fewer frames than a clip) wrap around,
    as `sampling.clip_indices` does. `indices` (num_clips, T) gives the clips' source frames instead of the sliding
    clips (`ClipPlan.indices`, e.g. sampled at a fixed fps). numpy rather than torch: this runs in decoder
    processes beside the model's, which need no more threads.
    """
    path = as_source(path)
    crops = crops or CropSet()
    per_clip = len(crops)
    if indices is None:
        starts = clip_starts(num_frames, preprocess, stride)
        indices = sampling.clip_indices(starts, num_frames, preprocess.clip_len, preprocess.frame_interval)
    idx = indices  # (K, T) source frames
    first_needed, last_needed = idx.min(axis=1), idx.max(axis=1)
    buffer: dict[int, list[np.ndarray]] = {}  # source frame -> its views
    views: list[CropView] = []
    k, j, shape = 0, 0, None
    for frames in iter_frames(path, size_hw=size_hw, chunk=chunk, autorotate=autorotate):
        if frames.shape[1:3] != shape:
            shape = frames.shape[1:3]
            views = frame_views(path, *shape, preprocess, crops)
        for t in range(frames.shape[0]):
            if k < len(idx) and j >= first_needed[k]:
                buffer[j] = [view.cut(frames[t]) for view in views]  # each (crop, crop, 3)
            while k < len(idx) and last_needed[k] <= j:
                for v in range(per_clip):
                    yield k * per_clip + v, [buffer[int(i)][v] for i in idx[k]]
                k += 1
                if k < len(idx):
                    for old in [i for i in buffer if i < first_needed[k]]:
                        del buffer[old]
            j += 1
    if k != len(idx):
        raise FrameCountChanged(f"{path}: FFmpeg decodes {j} of the {num_frames} frames its container lists "
                                "(corrupt data); count its frames again and plan the clips from that count")


def stream_clips(path: str | os.PathLike[str], preprocess: Preprocess, stride: int, num_frames: int,
                 size_hw: tuple[int, int] | None, chunk: int = 64, autorotate: bool = True,
                 indices: np.ndarray | None = None,
                 crops: CropSet | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(view number, uint8 clip (3, T, crop, crop)) for each view of each sliding clip, decoding the video once, in
    order.

    `clip_frames` stacked into channel-first tensors; memory stays bounded as there.
    """
    for v, frames in clip_frames(path, preprocess, stride, num_frames, size_hw, chunk, autorotate, indices, crops):
        clip = np.stack(frames)  # (T, crop, crop, 3)
        yield v, torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))  # (3, T, crop, crop)


def clip_batches(video: str | os.PathLike[str], plan: ClipPlan, preprocess: Preprocess,
                 size_hw: tuple[int, int] | None, batch_size: int, autorotate: bool = True,
                 crops: CropSet | None = None) -> Iterator[torch.Tensor]:
    """The views of the clips of `plan` (`stream_clips`: the video decoded once), stacked into batches of uint8
    (k, 3, T, crop, crop), in order: `batch_size` views, rounded down to whole clips (at least one), so that the
    crops of a clip go through the model together.

    The loop of `c3dnet.extract_features` and of `c3d serve`'s features, which hand the batches to their own model
    (a `ClipRunner`, or the server's shared batches). A generator: the next batch is decoded only when it is asked
    for, so a caller can stop between batches (the server's cancellation).
    """
    per_clip = len(crops or CropSet())
    size = max(per_clip, batch_size // per_clip * per_clip)
    batch: list[torch.Tensor] = []
    for _, clip in stream_clips(video, preprocess, 1, plan.num_frames, size_hw, autorotate=autorotate,
                                indices=plan.indices, crops=crops):
        batch.append(clip)
        if len(batch) == size:
            yield torch.stack(batch)  # (size, 3, T, crop, crop)
            batch = []
    if batch:
        yield torch.stack(batch)
