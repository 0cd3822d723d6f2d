"""Frames from video files (PyAV) and from frame folders (PIL), frame-accurate, decoding only what is needed.

Frame i of a video is its i-th displayed frame. A video's frames are identified by their presentation
timestamps: one cheap pass over the container's packets (no decoding, about 1 ms for a UCF-101 video) lists every
frame's pts and the keyframes; sorted, the pts map frame index <-> pts and give the frame count (the container's
own frame count is not trusted: it is often missing or off). Reading frames then decodes only from the keyframe
before each group of needed frames (seeking when that skips more than SEEK_MIN_GAP frames) up to the group's last
frame, and recognises each decoded frame by its pts, so a seek never shifts a clip by a frame. Frames are
converted to RGB (and resized) by FFmpeg's swscale, with threaded decoding.

Frame folders hold `img_00001.jpg`, `img_00002.jpg`, ... (template and start index configurable).

Example:
    >>> import numpy as np
    >>> from c3dnet.data.decode import count_frames, read_frames
    >>> from c3dnet.data.sources import VideoRecord
    >>> rec = VideoRecord(Path("v_Drumming_g01_c01.avi"), label=3)          # doctest: +SKIP
    >>> n = count_frames(rec)                                                  # doctest: +SKIP
    >>> clip = read_frames(rec, np.arange(16), size_hw=(128, 171))            # doctest: +SKIP
    >>> clip.shape, clip.dtype                                                 # doctest: +SKIP
    ((16, 128, 171, 3), dtype('uint8'))
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from c3dnet.errors import DataError
from c3dnet.log import get_logger

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

log = get_logger(__name__)

FRAME_TEMPLATE = "img_{:05d}.jpg"
"""File name of frame k (counted from FRAME_START) in a frame folder, as the seed and `c3d prepare` write them."""
FRAME_START = 1

SEEK_MIN_GAP = 16
"""Seek (to the keyframe before the next needed frame) only when that skips more than this many frames:
decoding a few unneeded frames costs less than a seek and a decoder flush."""

_CACHE_SIZE = 16384  # videos whose frame timing a process remembers: all of UCF-101 (13,320) fits


@dataclass(frozen=True)
class VideoInfo:
    """What a video (or frame folder) holds. `fps` is 0.0 for frame folders (unknown)."""

    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class _Index:
    """Per-video timing: sorted presentation timestamps of every frame (frame i has pts `pts[i]`)."""

    pts: np.ndarray  # (num_frames,) int64, sorted
    keyframes: np.ndarray  # sorted frame indices of the keyframes, where a seek can land
    info: VideoInfo
    sequential: bool = False  # no timestamps (raw streams): frame i is the i-th decoded frame, never seek

    def keyframe_before(self, i: int) -> int:
        """The last keyframe at or before frame i (0 when none is listed)."""
        k = int(np.searchsorted(self.keyframes, i, side="right")) - 1
        return int(self.keyframes[k]) if k >= 0 else 0


class _LRU(OrderedDict):
    """A bounded cache, safe to share between threads."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def put(self, key: object, value: object) -> None:
        with self.lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)


_index_cache = _LRU(_CACHE_SIZE)
_folder_cache = _LRU(_CACHE_SIZE)


def _as_path(record_or_path: VideoRecord | str | os.PathLike[str]) -> Path:
    return Path(getattr(record_or_path, "path", record_or_path))


def _cache_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise DataError(f"{path}: video file not found; check the path (and the dataset root)") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read this video ({e.strerror or e}); check that the path exists") from e
    # A rewritten file (new size or mtime) is probed again.
    return str(path), st.st_size, st.st_mtime_ns


# --------------------------------------------------------------------------------------------------- public API


def count_frames(record_or_path: VideoRecord | str | os.PathLike[str]) -> int:
    """Number of frames in a video file or frame folder (cached per path).

    A `VideoRecord` whose `num_frames` is known (frame folders from an annotation list) returns it unchecked.
    """
    known = getattr(record_or_path, "num_frames", None)
    if known is not None:
        return int(known)
    return video_info(_as_path(record_or_path)).num_frames


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate and frame size of a video file or frame folder (cached per path)."""
    path = Path(path)
    if path.is_dir():
        return _folder_info(path)
    return _video_index(path).info


def read_frames(
    record: VideoRecord | str | os.PathLike[str],
    indices: np.ndarray,
    size_hw: tuple[int, int] | None = None,
    *,
    template: str = FRAME_TEMPLATE,
    start_index: int = FRAME_START,
) -> np.ndarray:
    """Frames at `indices` (0-based, any order, repeats allowed) as uint8 (len(indices), H, W, 3) RGB.

    Args:
        record: a `VideoRecord` or a path to a video file or a frame folder.
        indices: frame indices, each in [0, num_frames).
        size_hw: resize every frame to (height, width); done by FFmpeg's scaler while decoding videos.
        template: frame file name pattern in frame folders.
        start_index: number of the first frame file in frame folders.

    Raises:
        DataError: unreadable or corrupt file, missing frame file, or an index past the end.
    """
    path = _as_path(record)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("read_frames needs at least one frame index")
    if path.is_dir():
        return _read_folder(path, indices, size_hw, template, start_index)
    return _read_video(path, indices, size_hw)


def iter_frames(
    path: str | os.PathLike[str],
    size_hw: tuple[int, int] | None = None,
    chunk: int = 64,
    *,
    template: str = FRAME_TEMPLATE,
    start_index: int = FRAME_START,
) -> Iterator[np.ndarray]:
    """Every frame in order, as uint8 arrays (<= chunk, H, W, 3) RGB; memory stays bounded for long videos."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    path = Path(path)
    if path.is_dir():
        n = _folder_info(path, template, start_index).num_frames
        for lo in range(0, n, chunk):
            yield _read_folder(path, np.arange(lo, min(n, lo + chunk)), size_hw, template, start_index)
        return
    buf: list[np.ndarray] = []
    for frame in _decode_range(path, None, size_hw):
        buf.append(frame)
        if len(buf) == chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


# --------------------------------------------------------------------------------------------------- videos


def _open(path: Path):  # -> (container, stream)
    import av

    if not path.exists():
        raise DataError(f"{path}: video file not found; check the path (and the dataset root)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: video file is empty (0 bytes); re-download or remove it (or use --skip-bad)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable video ({e}); the file is corrupt or not a video: "
                        "re-download or remove it (or use --skip-bad)") from e
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: has no video stream; remove it from the dataset (or use --skip-bad)")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg found a video stream but has no decoder for its codec
        container.close()
        raise DataError(f"{path}: no decoder for this video's codec; re-encode it (e.g. to H.264) or remove it "
                        "(or use --skip-bad)")
    stream.thread_type = "AUTO"
    if _decode_threads:
        stream.codec_context.thread_count = _decode_threads
    return container, stream


_decode_threads = 0  # FFmpeg threads per open video; 0 lets FFmpeg choose (one per core)


def set_decode_threads(n: int) -> None:
    """FFmpeg's decoding threads per open video in this process, and OpenCV's threads where it decodes JPEG
    frames (0: their own choice, one per core).

    Where many loader processes or extraction threads each decode a video, one thread apiece avoids
    oversubscribing the cores; a single decoder is faster with FFmpeg's own threads.
    """
    global _decode_threads
    if n < 0:
        raise ValueError(f"decode threads must be >= 0, got {n}")
    _decode_threads = int(n)
    cv2 = _opencv()
    if cv2 is not None:
        cv2.setNumThreads(n or -1)  # -1: OpenCV's default


def _video_index(path: Path) -> _Index:
    key = _cache_key(path)
    hit = _index_cache.get(key)
    if hit is not None:
        return hit
    import av

    container, stream = _open(path)
    try:
        pts, key_pts, no_pts, present = [], [], 0, 0
        for packet in container.demux(stream):
            if packet.is_corrupt:  # the demuxer flags packets cut short by truncation
                raise DataError(f"{path}: corrupt or truncated video data at packet {len(pts)}; re-download or "
                                "re-encode the file, or remove it (or use --skip-bad)")
            present += packet.size > 0 or packet.pts is not None  # not the demuxer's final flush packet
            if packet.size > 0 and packet.pts is None:
                no_pts += 1
            elif packet.size > 0:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        declared = int(stream.frames or 0)  # AVI and MP4 headers state their frame count; others give 0
        if present < declared:  # a file cut at a packet boundary: every packet whole, the end missing
            raise DataError(f"{path}: truncated: the container declares {declared} frames but holds only "
                            f"{present}; re-download or re-encode the file, or remove it (or use --skip-bad)")
        if no_pts:  # a raw stream (.h264, ...) without timestamps: count decoded frames, read them in order
            container.close()
            container, stream = _open(path)  # raw streams cannot seek back
            pts = list(range(sum(1 for _ in container.decode(stream))))
            key_pts = [0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        height, width = stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the video's packets ({e}); the file is corrupt or truncated: "
                        "re-download or remove it (or use --skip-bad)") from e
    finally:
        container.close()
    if not pts:
        raise DataError(f"{path}: no video frames found; the file is truncated or corrupt (or use --skip-bad)")
    pts_arr = np.unique(np.asarray(pts, dtype=np.int64))  # sorted = display order; duplicates are one frame
    if height <= 0 or width <= 0:
        raise DataError(f"{path}: the video stream has no frame size; the file is corrupt (or use --skip-bad)")
    keyframes = np.searchsorted(pts_arr, np.unique(np.asarray(key_pts, dtype=np.int64)))
    info = VideoInfo(len(pts_arr), fps, height, width)
    index = _Index(pts=pts_arr, keyframes=keyframes, info=info, sequential=bool(no_pts))
    _index_cache.put(key, index)
    return index


def _read_video(path: Path, indices: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    index = _video_index(path)
    n = index.info.num_frames
    if indices.min() < 0 or indices.max() >= n:
        raise DataError(f"{path}: frame index {int(indices.max()) if indices.max() >= n else int(indices.min())} "
                        f"is outside the video's {n} frames; the annotation's frame count may be wrong")
    wanted = np.unique(indices)  # sorted
    got: dict[int, np.ndarray] = {}
    for i, frame in _decode_indices(path, index, wanted, size_hw):
        got[i] = frame
    missing = [int(i) for i in wanted if int(i) not in got]
    if missing:
        # The container lists these frames but the decoder never produced them (broken packets).
        raise DataError(f"{path}: frames {missing[:5]} could not be decoded (of {n}); the file is corrupt: "
                        "re-encode or remove it (or use --skip-bad)")
    return np.stack([got[int(i)] for i in indices])


def _segments(index: _Index, wanted: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """Split sorted `wanted` into runs decoded in one go; each later run starts with a seek to its keyframe.

    A run begins with a seek when the keyframe before its first frame lies more than SEEK_MIN_GAP frames past
    the previous run's end (or past the start): reading on would decode at least that many unneeded frames.
    """
    if index.sequential:
        return [(None, wanted)]
    segments: list[tuple[int | None, list[int]]] = []
    for i in wanted.tolist():
        key = index.keyframe_before(i)
        # frames a seek would skip: those before the keyframe, or between the previous run's end and it
        skipped = key if not segments else key - segments[-1][1][-1] - 1
        if skipped > SEEK_MIN_GAP:
            segments.append((key, [i]))
        elif not segments:
            segments.append((None, [i]))
        else:
            segments[-1][1].append(i)
    return [(key, np.asarray(run)) for key, run in segments]


class _SeekMissed(Exception):
    """A seek landed past the frame it aimed at (or gave frames without timestamps): decode from the start."""


def _decode_indices(
    path: Path, index: _Index, wanted: np.ndarray, size_hw: tuple[int, int] | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB array) for each frame in sorted `wanted`, decoding each run from the keyframe before it."""
    segments = _segments(index, wanted)
    done: set[int] = set()
    try:
        for i, frame in _decode_segments(path, index, segments, size_hw):
            done.add(i)
            yield i, frame
        return
    except _SeekMissed:
        log.debug("%s: a seek missed its frame; decoding the rest from the start", path)
    rest = np.asarray([i for i in wanted.tolist() if i not in done], dtype=np.int64)
    if rest.size:
        yield from _decode_segments(path, index, [(None, rest)], size_hw)


def _position(pts: np.ndarray, value: int) -> int | None:
    """Index of `value` in the sorted `pts`, or None: a binary search, no per-call table for long videos."""
    i = int(np.searchsorted(pts, value))
    return i if i < len(pts) and int(pts[i]) == value else None


def _decode_segments(
    path: Path, index: _Index, segments: list[tuple[int | None, np.ndarray]], size_hw: tuple[int, int] | None
) -> Iterator[tuple[int, np.ndarray]]:
    import av

    container, stream = _open(path)
    convert = _Converter(size_hw)
    try:
        for key, run in segments:
            seeked = key is not None
            if seeked:
                # backward=True lands on the keyframe at or before this pts; frames are then told apart by pts.
                container.seek(int(index.pts[key]), stream=stream, backward=True, any_frame=False)
            wanted, first, last = set(run.tolist()), int(run[0]), int(run[-1])
            sequential = 0  # position of frames without a pts: valid only when decoding from the start
            started = False
            for frame in container.decode(stream):
                if index.sequential or (frame.pts is None and not seeked):
                    i = sequential
                elif frame.pts is None:
                    raise _SeekMissed
                else:
                    found = _position(index.pts, frame.pts)
                    if found is None:
                        continue  # a frame the packet pass did not list (e.g. decoder-inserted): not frame i
                    i = found
                if seeked and not started and i > first:
                    raise _SeekMissed
                started = True
                sequential = i + 1
                if i in wanted:
                    yield i, convert(frame)
                if i >= last:
                    break
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: decoding failed ({e}); the file is corrupt or truncated: "
                        "re-encode or remove it (or use --skip-bad)") from e
    finally:
        container.close()


def _decode_range(path: Path, last: int | None, size_hw: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Every frame from the start, in display order, up to frame `last` (all when None)."""
    index = _video_index(path)
    last = index.info.num_frames - 1 if last is None else last
    expected = 0
    for i, frame in _decode_segments(path, index, [(None, np.arange(last + 1))], size_hw):  # no seeks needed
        if i != expected:
            raise DataError(f"{path}: frame {expected} could not be decoded; the file is corrupt: "
                            "re-encode or remove it (or use --skip-bad)")
        expected += 1
        yield frame
    if expected != last + 1:
        raise DataError(f"{path}: decoding stopped at frame {expected} of {last + 1}; the file is corrupt or "
                        "truncated: re-encode or remove it (or use --skip-bad)")


_SCALE_IN_PLACE = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12"})


class _Converter:
    """Decoded frames -> RGB arrays, resized by FFmpeg's swscale, keeping scaler contexts across frames.

    A new reformatter per frame (`frame.reformat`) costs more than decoding; and scaling the YUV planes first,
    then converting at the target size through swscale's unscaled fast path, is about 2.5x faster than one
    scaled YUV->RGB pass (measured at 320x240 -> 171x128), and is what FFmpeg's own scale filter does.
    """

    def __init__(self, size_hw: tuple[int, int] | None) -> None:
        from av.video.reformatter import VideoReformatter

        self.size_hw = size_hw
        self.scale = VideoReformatter()
        self.to_rgb = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        if self.size_hw is None or (frame.height, frame.width) == tuple(self.size_hw):
            return self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        h, w = self.size_hw
        fmt = frame.format.name
        if fmt in _SCALE_IN_PLACE:
            frame = self.scale.reformat(frame, width=w, height=h, format=fmt, interpolation="BILINEAR")
            return self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        return self.to_rgb.reformat(frame, width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()


# --------------------------------------------------------------------------------------------------- frame folders


def _template_regex(template: str) -> re.Pattern[str]:
    m = re.fullmatch(r"(.*)\{:0?(\d*)d\}(.*)", template)
    if m is None:
        raise ValueError(f"frame template must contain one integer field like 'img_{{:05d}}.jpg', got {template!r}")
    return re.compile(re.escape(m.group(1)) + r"(\d+)" + re.escape(m.group(3)))


def _folder_info(path: Path, template: str = FRAME_TEMPLATE, start_index: int = FRAME_START) -> VideoInfo:
    key = (*_cache_key(path), template, start_index)
    hit = _folder_cache.get(key)
    if hit is not None:
        return hit
    pattern = _template_regex(template)
    try:
        numbers = sorted(int(m.group(1)) for name in os.listdir(path) if (m := pattern.fullmatch(name)))
    except OSError as e:
        raise DataError(f"{path}: cannot list the frame folder ({e.strerror or e}); check its permissions") from e
    if not numbers:
        raise DataError(f"{path}: no frames named like {template.format(start_index)!r}; "
                        "extract the frames with `c3d prepare` or check the frame template")
    expected = list(range(start_index, start_index + len(numbers)))
    if numbers != expected:
        gap = next(e for e, n in zip(expected, numbers, strict=False) if e != n)
        raise DataError(f"{path / template.format(gap)}: missing frame file ({len(numbers)} frames found, not "
                        f"numbered {start_index}..{start_index + len(numbers) - 1}); re-extract this video")
    height, width = _image_size(path / template.format(start_index))
    info = VideoInfo(len(numbers), 0.0, height, width)
    _folder_cache.put(key, info)
    return info


def _image_size(file: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return im.height, im.width
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{file}: cannot read this frame image ({e}); re-extract the video's frames") from e


def _opencv():  # -> the cv2 module, or None
    """OpenCV when installed (and not turned off with C3DNET_JPEG=pil): it decodes JPEG about 2x faster than PIL.

    Both bundle libjpeg-turbo with the same default settings, so the decoded pixels are the same (the tests
    compare them); anything OpenCV does not take cleanly goes through PIL, which gives the errors.
    """
    global _cv2
    if _cv2 is None:
        try:
            if os.environ.get("C3DNET_JPEG", "").lower() == "pil":
                raise ImportError
            import cv2

            _cv2 = cv2
        except ImportError:
            _cv2 = False
    return _cv2 or None


_cv2 = None  # the cv2 module, False where absent or off, None before the first look
_JPEG_END = b"\xff\xd9"


def _read_frame_opencv(cv2, file: Path) -> np.ndarray | None:
    """An RGB frame decoded by OpenCV, or None (not a complete JPEG, or unreadable) to leave it to PIL."""
    if file.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    try:
        data = np.fromfile(file, dtype=np.uint8)
    except OSError:
        return None
    if data.size < 4 or data[-2:].tobytes() != _JPEG_END:  # truncated: libjpeg would only warn
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_folder(
    path: Path, indices: np.ndarray, size_hw: tuple[int, int] | None, template: str, start_index: int
) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if indices.min() < 0:
        raise DataError(f"{path}: negative frame index {int(indices.min())}")
    cv2 = _opencv()
    loaded: dict[int, np.ndarray] = {}
    for i in np.unique(indices).tolist():
        file = path / template.format(i + start_index)
        frame = _read_frame_opencv(cv2, file) if cv2 is not None else None
        if frame is None:
            try:
                with Image.open(file) as im:
                    frame = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
            except FileNotFoundError as e:
                raise DataError(f"{file}: missing frame file (frame {i} of {path}); the annotation's frame count "
                                "may be wrong or the extraction incomplete: re-extract this video") from e
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                raise DataError(f"{file}: cannot decode this frame image ({e}); re-extract this video") from e
        if size_hw is not None and frame.shape[:2] != tuple(size_hw):
            frame = np.asarray(Image.fromarray(frame).resize((size_hw[1], size_hw[0]), Image.BILINEAR))
        loaded[i] = frame
    shapes = {a.shape for a in loaded.values()}
    if len(shapes) > 1:
        raise DataError(f"{path}: frames have different sizes {sorted(shapes)}; re-extract this video")
    return np.stack([loaded[int(i)] for i in indices])
