"""The map-style clip dataset: record i -> uint8 clips, deterministic per (seed, epoch, i).

Each item draws its randomness from `np.random.default_rng([seed, epoch, i])`, so a sample does not depend on
which worker (or which rank under a DistributedSampler) loads it, and resuming at an epoch replays it exactly.
Frames are resized as they are decoded to `preprocess.resize_target` (OpenCV `INTER_LINEAR`, the reference's;
frame folders already extracted at that size are not resized at all); normalisation is left to the consumer, on
the device.

Example:
    >>> from torch.utils.data import DataLoader
    >>> src = load_source("data/UCF-101", "train")                                  # doctest: +SKIP
    >>> ds = ClipDataset(src.records, "train", SEED_PREPROCESS, seed=1234)          # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=8,
    ...                     worker_init_fn=worker_init_fn)                          # doctest: +SKIP
    >>> clips, labels, idx = next(iter(loader))   # clips: (32, 1, 3, 16, 112, 112) uint8   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from c3dnet.data import sampling
from c3dnet.data.decode import count_frames, read_frames, replanned, set_decode_threads, video_info, video_times
from c3dnet.data.sources import VideoRecord
from c3dnet.data.timing import resample
from c3dnet.data.transforms import eval_transform, train_transform
from c3dnet.errors import DataError
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

MODES = ("train", "val", "test")


@dataclass(frozen=True)
class ClipSample:
    """One item's clips, uint8 (K, 3, T, crop, crop), the frame indices (K, T) they hold, and the video's frames."""

    clips: torch.Tensor
    indices: np.ndarray
    num_frames: int


class ClipDataset(Dataset):
    """Clips of `records` for training (one random clip), validation (the centre clip) or testing (K clips).

    Args:
        records: the videos (files or frame folders) and labels.
        mode: "train": one random clip, random crop and flip; "val": the centre clip, centre crop;
            "test": `num_clips` evenly spaced clips, centre crop.
        preprocess: clip length, frame interval, resize and crop (mean/std are applied later by `normalize`).
        num_clips: clips per video in test mode.
        seed: base seed of every sample's random generator.
        skip_bad: when a video cannot be read, log it and return the next readable one (with that one's index,
            so evaluation keyed by index never credits the broken video) instead of raising `DataError`.
        autorotate: turn video frames as their display matrix says (FFmpeg's default); False keeps the coded
            orientation.
        fps: sample each video at this frame rate by presentation time before choosing clips
            (`data.timing.resample`); None: its own frames.
        source_fps: with `fps`, the frame rate of frame folders without recorded timestamps.

    Items are `(clips, label, index)`: clips uint8 (K, 3, T, crop, crop), K = 1 for train/val, `num_clips` for test.
    """

    def __init__(
        self,
        records: list[VideoRecord],
        mode: Literal["train", "val", "test"],
        preprocess: Preprocess,
        num_clips: int = 10,
        seed: int = 0,
        skip_bad: bool = False,
        autorotate: bool = True,
        fps: Fraction | None = None,
        source_fps: Fraction | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.records = list(records)
        self.mode = mode
        self.preprocess = preprocess
        self.num_clips = num_clips
        self.seed = seed
        self.skip_bad = skip_bad
        self.autorotate = autorotate
        self.fps, self.source_fps = fps, source_fps
        self.epoch = 0
        self.failed: dict[int, str] = {}  # index -> reason, in this process (each worker keeps its own)

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose random clips, crops and flips the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def clip_indices(self, i: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Frame indices (K, T) of item i's clips."""
        p = self.preprocess
        if self.mode == "train":
            return sampling.train_clip(num_frames, p.clip_len, rng, p.frame_interval)[None]
        if self.mode == "val":
            return sampling.center_clip(num_frames, p.clip_len, p.frame_interval)[None]
        return sampling.test_clips(num_frames, p.clip_len, self.num_clips, p.frame_interval)

    def load(self, i: int) -> torch.Tensor:
        """Clips of item i, uint8 (K, 3, T, crop, crop); raises `DataError` for an unreadable video."""
        return self.sample(i).clips

    def sample(self, i: int) -> ClipSample:
        """Clips of item i with the frames they were cut from; raises `DataError` for an unreadable video.

        Planned once more if decoding showed that the video holds fewer frames than its container lists."""
        return replanned(lambda: self._sample(i))

    def _sample(self, i: int) -> ClipSample:
        record = self.records[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        info = video_info(record.path, self.autorotate)  # cached per process: frame size (and count, for videos)
        num_frames = count_frames(record) if record.num_frames is not None else info.num_frames
        if self.fps is None:
            indices = self.clip_indices(i, num_frames, rng)  # (K, T)
        else:  # clips chosen among the frames sampled at fps, then mapped to source frames
            frame_map = resample(video_times(record.path, self.source_fps), self.fps)
            indices = frame_map[self.clip_indices(i, len(frame_map), rng)]  # (K, T)
        # Resize while decoding; frames already at the target size, such as those `c3d prepare` extracted at
        # short side 128, are not resized at all.
        size_hw = self.preprocess.resize_target(info.height, info.width)
        frames = read_frames(record, indices.reshape(-1), size_hw, autorotate=self.autorotate)  # (K * T, H, W, 3)
        frames = frames.reshape(indices.shape[0], indices.shape[1], *frames.shape[1:])  # (K, T, H, W, 3)
        if self.mode == "train":
            clips = [train_transform(frames[0], self.preprocess, rng)]
        else:
            clips = [eval_transform(f, self.preprocess) for f in frames]
        # numpy's stack: torch's multi-threaded copy of small uint8 tensors stalls when the cores are busy
        clips = torch.from_numpy(np.stack([c.numpy() for c in clips]))  # (K, 3, T, crop, crop)
        return ClipSample(clips, indices, num_frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if not 0 <= i < len(self.records):
            raise IndexError(f"index {i} out of range for {len(self.records)} videos")
        if not self.skip_bad:
            return self.load(i), self.records[i].label, i
        for step in range(len(self.records)):
            j = (i + step) % len(self.records)
            try:
                return self.load(j), self.records[j].label, j
            except DataError as e:
                if j not in self.failed:
                    self.failed[j] = str(e)
                    log.warning("skipping unreadable video %d: %s", j, e)
        raise DataError(f"none of the {len(self.records)} videos could be read; first error: "
                        f"{next(iter(self.failed.values()))}")


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker set-up: distinct global seeds per worker, one intra-op thread and one decoding thread
    (workers already run in parallel; more threads would oversubscribe the cores). Clip sampling itself does not
    depend on it."""
    seed = torch.initial_seed() % 2**32  # differs per worker: the DataLoader sets base_seed + worker_id
    # Legacy global numpy state (used by user code, not by c3dnet) would otherwise repeat across forked workers.
    np.random.seed(seed)  # noqa: NPY002
    torch.set_num_threads(1)
    set_decode_threads(1)  # likewise FFmpeg's own decoding threads
