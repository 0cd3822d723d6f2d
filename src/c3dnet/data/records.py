"""Plain records about videos, shared by the decoding modules: what a video holds (`VideoInfo`), how a file version
is keyed (`file_key`), the limits an untrusted video is held to (`FrameLimits`, `DecodeGuard`), and the cache of
per-file facts (`MemoryLRU`). A leaf: it imports nothing of c3dnet but its errors.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from c3dnet.errors import DataError


class LimitExceeded(DataError):
    """A video past a limit the caller set (frame size, aspect ratio, decoding budget): refused, not broken."""


class NotAVideo(DataError):
    """A file FFmpeg cannot open as a video (not a container it knows, or cut off before its headers end)."""


class NoVideoStream(DataError):
    """A file FFmpeg reads that holds no video stream (audio only, subtitles, ...)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video (or frame folder) holds.

    Attributes:
        num_frames: frames, as FFmpeg counts them.
        fps: average frame rate (0.0 for frame folders: unknown).
        height, width: frame size as returned: displayed (after autorotation) unless autorotation is off.
        orientation: the turn applied to the coded frames ('none', 'transpose=clock', 'hflip,vflip', ...).
        rotation: the display matrix's clockwise rotation in degrees, applied or not (0 without one).
    """

    num_frames: int
    fps: float
    height: int
    width: int
    orientation: str = "none"
    rotation: int = 0


def file_key(path: Path) -> tuple[str, int, int]:
    """(path, size, mtime): a rewritten file is indexed again."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise DataError(f"{path}: video file not found; check the path (and the dataset root)") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read this video ({e.strerror or e}); check that the path exists") from e
    return str(path), st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class FrameLimits:
    """The largest frames a video may have, checked from the stream header before any frame is decoded and again
    on every decoded frame (a stream may change size midway).

    Attributes:
        max_pixels: most pixels in one frame (width x height); None: no limit.
        max_aspect: most width / height (or height / width); None: no limit. Frames are resized to a fixed
            short side before they are cropped, so this bounds the resized frame too (a 8192x16 video would
            otherwise become 65536x128).
    """

    max_pixels: int | None = None
    max_aspect: float | None = None

    def check(self, width: int, height: int, where: object, option: str = "") -> None:
        """`LimitExceeded` naming `where` when a `width` x `height` frame is past a limit."""
        hint = f" ({option})" if option else ""
        if width <= 0 or height <= 0:
            raise DataError(f"{where}: the video stream declares no frame size ({width}x{height}); the file is "
                            "corrupt: re-encode it")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise LimitExceeded(f"{where}: frames of {width}x{height} ({width * height / 1e6:.1f} megapixels) are "
                                f"larger than this limit of {self.max_pixels / 1e6:.1f} megapixels{hint}; scale the "
                                "video down (e.g. ffmpeg -vf scale=-2:720) and try again")
        if self.max_aspect is not None and max(width, height) > self.max_aspect * min(width, height):
            raise LimitExceeded(f"{where}: frames of {width}x{height} have an aspect ratio past this limit of "
                                f"{self.max_aspect:g}:1{hint}; crop or pad the video and try again")


class DecodeGuard(Protocol):
    """Called while a video decodes, so that its owner can stop it (cancellation, a CPU budget) or let other work
    run (time slices). `tick` raises to stop the decoding; it is called at least once every few frames, in the
    counting pass as in every read."""

    def tick(self) -> None: ...


class MemoryLRU:
    """A least-recently-used cache bounded by the memory of what it holds, safe to share between threads.

    `get` refreshes an entry; `put` evicts the least recently used entries until the total is within `max_bytes`.
    An entry's size is `sizeof(value)` (by default its numpy arrays' bytes plus a small overhead).
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[object], int] | None = None) -> None:
        self.max_bytes = max_bytes
        self.sizeof = sizeof or array_bytes
        self.total = 0
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: object) -> None:
        size = self.sizeof(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.total -= old[1]
            self._entries[key] = (value, size)
            self.total += size
            while self.total > self.max_bytes and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.total -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


def array_bytes(value: object) -> int:
    """The bytes of the numpy arrays among `value`'s fields, plus 512 for the record itself."""
    fields = getattr(value, "__dataclass_fields__", None)
    items = [getattr(value, name) for name in fields] if fields else list(getattr(value, "__dict__", {}).values())
    return 512 + sum(v.nbytes for v in items if isinstance(v, np.ndarray)) + sys.getsizeof(value)
