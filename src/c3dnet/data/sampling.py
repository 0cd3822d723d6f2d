"""Clip sampling: which frame indices (0-based) make up each clip. Pure functions, no I/O.

Formulas follow the seed (and mmaction2's SampleFrames), with `span = clip_len * frame_interval`:
- train: one clip starting uniformly in [0, num_frames - span];
- test: clip k of n starts at int(k * avg + avg / 2), avg = (num_frames - span + 1) / n;
- val: the test formula with n = 1 (the centre clip);
- sliding: starts 0, stride, 2 * stride, ... while the clip fits (feature extraction).
A video shorter than `span` starts every clip at 0 and wraps indices modulo its length.

Example:
    >>> test_clips(187, 16, 10)[:, 0].tolist()
    [8, 25, 43, 60, 77, 94, 111, 129, 146, 163]
    >>> train_clip(5, 4, np.random.default_rng(0)).tolist() in ([0, 1, 2, 3], [1, 2, 3, 4])
    True
    >>> sliding_clips(40, 16, 16)[:, 0].tolist()
    [0, 16]
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int, clip_len: int, frame_interval: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if clip_len < 1 or frame_interval < 1:
        raise ValueError(f"clip_len and frame_interval must be >= 1, got {clip_len}, {frame_interval}")


def clip_indices(starts: np.ndarray, num_frames: int, clip_len: int, frame_interval: int = 1) -> np.ndarray:
    """Frame indices (num_clips, clip_len) of clips starting at `starts`, wrapped modulo `num_frames`."""
    offsets = np.arange(clip_len, dtype=np.int64) * frame_interval
    return (np.asarray(starts, dtype=np.int64)[:, None] + offsets[None, :]) % num_frames


def train_clip(num_frames: int, clip_len: int, rng: np.random.Generator, frame_interval: int = 1) -> np.ndarray:
    """One random clip (clip_len,) for training: start uniform in [0, num_frames - span]."""
    _check(num_frames, clip_len, frame_interval)
    room = num_frames - clip_len * frame_interval + 1
    start = int(rng.integers(room)) if room > 0 else 0
    return clip_indices(np.array([start]), num_frames, clip_len, frame_interval)[0]


def test_start_frames(num_frames: int, clip_len: int, num_clips: int = 10, frame_interval: int = 1) -> np.ndarray:
    """Start frames (num_clips,) of the evenly spaced test clips."""
    _check(num_frames, clip_len, frame_interval)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    span = clip_len * frame_interval
    if num_frames < span:
        return np.zeros(num_clips, dtype=np.int64)
    avg = (num_frames - span + 1) / num_clips
    return (np.arange(num_clips) * avg + avg / 2.0).astype(np.int64)


def test_clips(num_frames: int, clip_len: int, num_clips: int = 10, frame_interval: int = 1) -> np.ndarray:
    """Frame indices (num_clips, clip_len) of the evenly spaced test clips."""
    starts = test_start_frames(num_frames, clip_len, num_clips, frame_interval)
    return clip_indices(starts, num_frames, clip_len, frame_interval)


def center_clip(num_frames: int, clip_len: int, frame_interval: int = 1) -> np.ndarray:
    """The validation clip (clip_len,): the test formula with one clip."""
    return test_clips(num_frames, clip_len, 1, frame_interval)[0]


def sliding_start_frames(num_frames: int, clip_len: int, stride: int, frame_interval: int = 1) -> np.ndarray:
    """Start frames of consecutive clips every `stride` frames that fit in the video; [0] if none fits."""
    _check(num_frames, clip_len, frame_interval)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last = num_frames - clip_len * frame_interval
    if last < 0:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, last + 1, stride, dtype=np.int64)


def sliding_clips(num_frames: int, clip_len: int, stride: int, frame_interval: int = 1) -> np.ndarray:
    """Frame indices (num_clips, clip_len) of sliding-window clips (feature extraction)."""
    starts = sliding_start_frames(num_frames, clip_len, stride, frame_interval)
    return clip_indices(starts, num_frames, clip_len, frame_interval)
