"""When each frame is shown, and sampling a video at a fixed frame rate by those times (`--fps`).

A video's frame times are FFmpeg's: the presentation timestamps of its frames in output order (what
`ffprobe -show_frames` reports as `best_effort_timestamp`), counted from the first frame. Sampling at F frames
per second takes, for k = 0, 1, ... while k / F is before the end of the video (the last frame's time plus its
duration), the frame on screen at time k / F: the last frame whose time is <= k / F. Times are compared exactly,
as fractions of the stream's time base, so a 25 fps video sampled at 25 fps gives every frame once.

Frame folders hold no timestamps: `c3d prepare` writes each folder's times to `timing.json` beside its frames;
for other folders the source frame rate must be given (`--source-fps`).

Example:
    >>> times = FrameTimes.constant(10, Fraction(25))              # 10 frames at 25 fps: 0.4 s
    >>> resample(times, Fraction(10)).tolist()                     # 0, 0.1, 0.2, 0.3 s
    [0, 2, 5, 7]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from c3dnet.errors import ConfigError, DataError

TIMING_FILE = "timing.json"
"""A frame folder's frame times, written by `c3d prepare` (see `FrameTimes.to_dict`)."""

MAX_SAMPLED_FRAMES = 10_000_000  # a resampled video longer than this is refused (a hostile fps or timestamp)


def parse_fps(text: str | float | Fraction, what: str = "--fps") -> Fraction:
    """A positive frame rate from "30", "29.97" or "30000/1001"; `ConfigError` saying what is allowed otherwise."""
    try:
        fps = Fraction(str(text)) if not isinstance(text, Fraction) else text
    except (ValueError, ZeroDivisionError):
        fps = None
    if fps is None or fps <= 0 or fps > 10_000:
        raise ConfigError(f"{what} must be a frame rate above 0 and at most 10000, like 30, 29.97 or 30000/1001; "
                          f"got {text!r}")
    return fps


def parse_rates(fps: str | float | None, source_fps: str | float | None, names: tuple[str, str] = ("--fps",
                "--source-fps")) -> tuple[Fraction | None, Fraction | None]:
    """(fps, source_fps) as exact fractions, None where not given; `ConfigError` naming the option otherwise."""
    return (parse_fps(fps, names[0]) if fps is not None else None,
            parse_fps(source_fps, names[1]) if source_fps is not None else None)


@dataclass(frozen=True)
class FrameTimes:
    """Presentation times of a video's frames in output order.

    Attributes:
        ts: (num_frames,) int64 timestamps in `time_base` units, counted from the first frame (ts[0] == 0).
        end: when the last frame stops being shown (its time plus its duration), in the same units.
        time_base: seconds per unit.
    """

    ts: np.ndarray
    end: int
    time_base: Fraction

    @classmethod
    def constant(cls, num_frames: int, fps: Fraction) -> FrameTimes:
        """Frames every 1 / fps seconds (frame folders, in-memory videos, streams without timestamps)."""
        fps = Fraction(fps)
        # The time base 1 / (fps numerator) makes every time an integer: frame i at i * denominator.
        return cls(np.arange(num_frames, dtype=np.int64) * fps.denominator, num_frames * fps.denominator,
                   Fraction(1, fps.numerator))

    @classmethod
    def from_timestamps(cls, ts: np.ndarray, last_duration: int, time_base: Fraction) -> FrameTimes:
        """From absolute timestamps in output order and the last frame's duration (<= 0: the mean interval)."""
        ts = np.asarray(ts, dtype=np.int64)
        rel = ts - ts[0]
        if last_duration <= 0:
            last_duration = int(round(rel[-1] / (len(rel) - 1))) if len(rel) > 1 and rel[-1] > 0 else 1
        return cls(rel, int(rel[-1]) + max(int(last_duration), 1), Fraction(time_base))

    @property
    def num_frames(self) -> int:
        return len(self.ts)

    def seconds(self, units: np.ndarray | int) -> np.ndarray:
        """Times in seconds (float64) of timestamps in this time base."""
        return np.asarray(units, dtype=np.float64) * float(self.time_base)

    def to_dict(self) -> dict:
        return {"time_base": str(self.time_base), "ts": self.ts.tolist(), "end": self.end}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FrameTimes:
        try:
            ts = np.asarray(d["ts"], dtype=np.int64)
            times = cls(ts, int(d["end"]), Fraction(d["time_base"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
            raise DataError(f"{where}: not a frame-times record ({e}); re-run `c3d prepare` on the video") from e
        if not len(ts) or ts[0] != 0 or np.any(np.diff(ts) <= 0) or times.end <= ts[-1] or times.time_base <= 0:
            raise DataError(f"{where}: frame times must start at 0 and increase; re-run `c3d prepare` on the video")
        return times


def resample(times: FrameTimes, fps: Fraction) -> np.ndarray:
    """Source frame index (int64) of each output frame when sampling at `fps` (see the module docstring)."""
    fps = Fraction(fps)
    # k / fps >= ts_i * tb  <=>  k * den(fps) * den(tb) >= ts_i * num(tb) * num(fps): all integers, exact.
    tb = times.time_base
    lhs = fps.denominator * tb.denominator
    count = -(-times.end * tb.numerator * fps.numerator // lhs)  # ceil: k / fps < end * tb
    if count > MAX_SAMPLED_FRAMES:
        raise DataError(f"sampling at {fps} fps would give {count} frames (more than {MAX_SAMPLED_FRAMES}); "
                        "check --fps and the video's timestamps")
    k = np.arange(count, dtype=object if _overflows(count, lhs, times, fps) else np.int64)
    scaled = times.ts.astype(object) * (tb.numerator * fps.numerator) if k.dtype == object else \
        times.ts * (tb.numerator * fps.numerator)
    return (np.searchsorted(scaled, k * lhs, side="right") - 1).astype(np.int64)


def _overflows(count: int, lhs: int, times: FrameTimes, fps: Fraction) -> bool:
    limit = 2 ** 62
    return count * lhs >= limit or times.end * times.time_base.numerator * fps.numerator >= limit


def folder_times(folder: Path, num_frames: int, source_fps: Fraction | None) -> FrameTimes:
    """A frame folder's times: from its `timing.json` (written by `c3d prepare`), else at `source_fps`."""
    record = folder / TIMING_FILE
    if record.is_file():
        try:
            d = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{record}: unreadable ({e}); re-run `c3d prepare` on the video or remove it and "
                            "give --source-fps") from e
        times = FrameTimes.from_dict(d, str(record))
        if times.num_frames != num_frames:
            raise DataError(f"{record}: lists {times.num_frames} frames but the folder holds {num_frames}; "
                            "re-run `c3d prepare` on the video")
        return times
    if source_fps is None:
        raise DataError(f"{folder}: a frame folder has no timestamps, so --fps needs its frame rate: pass "
                        f"--source-fps (e.g. --source-fps 25), or extract it with `c3d prepare`, which records "
                        f"them in {TIMING_FILE}")
    return FrameTimes.constant(num_frames, source_fps)
