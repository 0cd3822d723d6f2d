"""Frames from video files (PyAV) and frame folders, exactly as FFmpeg numbers and shows them.

Frame i of a video is the i-th frame that the FFmpeg command-line tool outputs
(`ffmpeg -i F -map 0:v:0 -fps_mode passthrough`), turned as its display matrix says unless `autorotate=False`
(FFmpeg's `-noautorotate`). `c3dnet.data.video_index` maps frame numbers to what the decoder returns, by
presentation timestamps where they identify frames (MP4, Matroska) and by counting frames in decoder output
order elsewhere (AVI, packed MPEG-4, MPEG-TS, raw streams). Reading decodes only from the keyframe before each
group of needed frames (seeking when that skips more than SEEK_MIN_GAP frames) up to the group's last frame, and
recognises every decoded frame, by pts or by a checksum recorded at its position; a frame it cannot recognise is
never returned (it decodes from the start instead, and a frame that still cannot be had is an error).

Frames are converted to RGB by FFmpeg's swscale, turned, then resized by OpenCV `INTER_LINEAR`, the reference's
resize (`c3dnet.data.resize`). Frame folders hold `img_00001.jpg`, `img_00002.jpg`, ... (`c3dnet.data.folders`).

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
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from c3dnet.data.folders import FRAME_START, FRAME_TEMPLATE, folder_info, read_folder
from c3dnet.data.orientation import orient
from c3dnet.data.resize import resize_frames, resize_image
from c3dnet.data.video_index import (
    BestEffortTimestamps,
    PacketTally,
    VideoIndex,
    VideoInfo,
    checksum,
    frame_orientation,
    open_video,
    set_video_threads,
    video_index,
)
from c3dnet.errors import DataError
from c3dnet.log import get_logger

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

__all__ = ["FRAME_START", "FRAME_TEMPLATE", "SEEK_MIN_GAP", "ArrayVideo", "VideoInfo", "count_frames", "iter_frames",
           "plan_reads", "read_frames", "set_decode_threads", "video_info"]

log = get_logger(__name__)

SEEK_MIN_GAP = 16
"""Seek (to the keyframe before the next needed frame) only when that skips more than this many frames:
decoding a few unneeded frames costs less than a seek and a decoder flush."""

SEEK_MAX_LEADING = 64
"""After a seek in a counted video, how many frames may come out before the keyframe's own frame (the leading
frames of an open GOP) before the seek is given up for decoding from the start."""

_ERR_REENCODE = "the file is corrupt or truncated: re-encode or remove it (or use --skip-bad)"


@dataclass(frozen=True, eq=False)
class ArrayVideo:
    """A video already in memory: uint8 RGB frames (T, H, W, 3) as they are shown, at `fps` (0: unknown).

    Accepted wherever a video path is (`read_frames`, `iter_frames`, `video_info`, a `VideoRecord`'s path), so
    clips are cut from it exactly as from a file holding these frames.
    """

    frames: np.ndarray
    fps: float = 0.0
    name: str = "<frames>"

    def __post_init__(self) -> None:
        a = self.frames
        if not isinstance(a, np.ndarray) or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or not len(a):
            raise ValueError(f"{self.name}: expected uint8 RGB frames (T, H, W, 3) with T >= 1, got "
                             f"{getattr(a, 'shape', type(a).__name__)} {getattr(a, 'dtype', '')}")

    def __str__(self) -> str:
        return self.name

    def is_dir(self) -> bool:  # a `VideoRecord` holding one is not a frame folder
        return False

    def info(self) -> VideoInfo:
        return VideoInfo(len(self.frames), float(self.fps), self.frames.shape[1], self.frames.shape[2])

    def read(self, indices: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
        bad = indices[(indices < 0) | (indices >= len(self.frames))]
        if bad.size:
            raise DataError(f"{self.name}: frame index {int(bad[0])} is outside its {len(self.frames)} frames")
        frames = self.frames[indices]
        return frames if size_hw is None else resize_frames(frames, size_hw)


def _as_path(record_or_path: VideoRecord | str | os.PathLike[str] | ArrayVideo) -> Path | ArrayVideo:
    source = getattr(record_or_path, "path", record_or_path)
    return source if isinstance(source, ArrayVideo) else Path(source)


# --------------------------------------------------------------------------------------------------- public API


def count_frames(record_or_path: VideoRecord | str | os.PathLike[str] | ArrayVideo) -> int:
    """Number of frames in a video file (FFmpeg's count) or frame folder (cached per file).

    A `VideoRecord` whose `num_frames` is known (frame folders from an annotation list) returns it unchecked.
    """
    known = getattr(record_or_path, "num_frames", None)
    if known is not None:
        return int(known)
    return video_info(_as_path(record_or_path)).num_frames


def video_info(path: str | os.PathLike[str] | ArrayVideo, autorotate: bool = True) -> VideoInfo:
    """Frame count, frame rate, frame size (as returned: turned unless `autorotate=False`) and orientation."""
    if isinstance(path, ArrayVideo):
        return path.info()
    path = Path(path)
    if path.is_dir():
        return folder_info(path)
    return video_index(path).info(autorotate)


def set_decode_threads(n: int) -> None:
    """FFmpeg's decoding threads per open video in this process (0: FFmpeg's choice, one per core).

    Where many loader processes or extraction threads each decode a video, one thread apiece avoids
    oversubscribing the cores; a single decoder is faster with FFmpeg's own threads. (OpenCV, which resizes and
    decodes JPEG frames, always runs on one thread: see `c3dnet.data.resize`.)
    """
    set_video_threads(n)


def read_frames(
    record: VideoRecord | str | os.PathLike[str] | ArrayVideo,
    indices: np.ndarray,
    size_hw: tuple[int, int] | None = None,
    *,
    template: str = FRAME_TEMPLATE,
    start_index: int = FRAME_START,
    autorotate: bool = True,
) -> np.ndarray:
    """Frames at `indices` (0-based, any order, repeats allowed) as uint8 (len(indices), H, W, 3) RGB.

    Args:
        record: a `VideoRecord` or a path to a video file or a frame folder, or an `ArrayVideo`.
        indices: frame indices, each in [0, num_frames).
        size_hw: resize every frame to (height, width) (OpenCV `INTER_LINEAR`), after turning it.
        template: frame file name pattern in frame folders.
        start_index: number of the first frame file in frame folders.
        autorotate: turn video frames as their display matrix says (FFmpeg's default); False keeps the coded
            orientation.

    Raises:
        DataError: unreadable or corrupt file, missing frame file, or an index past the end.
    """
    path = _as_path(record)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("read_frames needs at least one frame index")
    if isinstance(path, ArrayVideo):
        return path.read(indices, size_hw)
    if path.is_dir():
        return read_folder(path, indices, size_hw, template, start_index)
    return _read_video(path, indices, size_hw, autorotate)


def iter_frames(
    path: str | os.PathLike[str] | ArrayVideo,
    size_hw: tuple[int, int] | None = None,
    chunk: int = 64,
    *,
    template: str = FRAME_TEMPLATE,
    start_index: int = FRAME_START,
    autorotate: bool = True,
    times: BestEffortTimestamps | None = None,
) -> Iterator[np.ndarray]:
    """Every frame in order, as uint8 arrays (<= chunk, H, W, 3) RGB; memory stays bounded for long videos.

    Videos are decoded once from the start; their frames are, by definition, FFmpeg's frames in order, so no
    index is built. A video file's frame timestamps are recorded into `times` as they are decoded (for
    `BestEffortTimestamps.frame_times`, without a second pass); frame folders and arrays record none.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if isinstance(path, ArrayVideo):
        for lo in range(0, len(path.frames), chunk):
            yield path.read(np.arange(lo, min(len(path.frames), lo + chunk)), size_hw)
        return
    path = Path(path)
    if path.is_dir():
        n = folder_info(path, template, start_index).num_frames
        for lo in range(0, n, chunk):
            yield read_folder(path, np.arange(lo, min(n, lo + chunk)), size_hw, template, start_index)
        return
    buf: list[np.ndarray] = []
    for frame in _decode_all(path, size_hw, autorotate, times):
        buf.append(frame)
        if len(buf) == chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


# --------------------------------------------------------------------------------------------------- videos


_UNSCALED_RGB = frozenset({"yuv420p", "yuvj420p"})
"""Formats whose conversion to RGB swscale does without scaling (even sizes only): there `VideoReformatter` gives
exactly the FFmpeg CLI's pixels, a little faster than a filter graph."""


class _Converter:
    """Decoded frames -> RGB arrays as the FFmpeg CLI converts them, then turned, then resized (OpenCV).

    The CLI converts through libavfilter (`scale=flags=bicubic,format=rgb24`). 8-bit 4:2:0 frames of even size
    take swscale's unscaled converter there, which `VideoReformatter` reaches directly (its context kept across
    frames); any other frame (odd sizes, 10-bit, 4:2:2, ...) goes through the same filter graph as the CLI's,
    since `VideoReformatter` upsamples their chroma differently (by up to 100 grey levels at sharp colour edges).
    """

    def __init__(self, size_hw: tuple[int, int] | None, ops: tuple[str, ...]) -> None:
        from av.video.reformatter import VideoReformatter

        self.size_hw = size_hw
        self.ops = ops
        self.to_rgb = VideoReformatter()
        self.graph = None
        self.graph_key: tuple | None = None

    def __call__(self, frame) -> np.ndarray:
        fmt = frame.format.name
        if fmt in _UNSCALED_RGB and frame.width % 2 == 0 and frame.height % 2 == 0:
            rgb = self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        else:
            rgb = self._through_graph(frame)
        rgb = orient(rgb, self.ops)
        return rgb if self.size_hw is None else resize_image(rgb, self.size_hw)

    def _through_graph(self, frame) -> np.ndarray:
        import av

        key = (frame.width, frame.height, frame.format.name)
        if self.graph is None or key != self.graph_key:  # built again when the stream changes size or format
            graph = av.filter.Graph()
            chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                      time_base=frame.time_base or "1/25"),
                     graph.add("scale", "flags=bicubic"), graph.add("format", "rgb24"), graph.add("buffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            graph.configure()
            self.graph, self.graph_key = graph, key
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()


class _Contradicted(Exception):
    """Decoding showed that pts do not identify this video's frames: it needs a counted index."""


class _SeekMissed(Exception):
    """A seek did not give frames that provably equal decoding from the start: decode from the start instead."""


def _read_video(path: Path, indices: np.ndarray, size_hw: tuple[int, int] | None, autorotate: bool) -> np.ndarray:
    index = video_index(path)
    while True:
        n = index.num_frames
        if indices.min() < 0 or indices.max() >= n:
            bad = int(indices.max()) if indices.max() >= n else int(indices.min())
            raise DataError(f"{path}: frame index {bad} is outside the video's {n} frames; the annotation's frame "
                            "count may be wrong")
        wanted = np.unique(indices)  # sorted
        convert = _Converter(size_hw, index.orientation.ops if autorotate else ())
        try:
            got = dict(_decode_wanted(path, index, wanted, convert))
        except _Contradicted as e:
            log.debug("%s: %s; counting frames instead", path, e)
            index = video_index(path, counted=True)
            continue
        missing = [int(i) for i in wanted if int(i) not in got]
        if missing and index.timed:  # listed frames the decoder never gave: the pts list is not FFmpeg's count
            index = video_index(path, counted=True)
            continue
        if missing:
            raise DataError(f"{path}: frames {missing[:5]} could not be decoded (of {n}); {_ERR_REENCODE}")
        return np.stack([got[int(i)] for i in indices])


def plan_reads(index: VideoIndex, wanted: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """Split sorted `wanted` into runs decoded in one go: (keyframe to seek to, or None to decode from the start).

    A run begins with a seek when the keyframe before its first frame lies more than SEEK_MIN_GAP frames past
    the previous run's end (or past the start): reading on would decode at least that many unneeded frames.
    """
    segments: list[tuple[int | None, list[int]]] = []
    for i in wanted.tolist():
        k = index.keyframe_before(i)
        key = int(index.keyframes[k]) if k is not None else 0
        skipped = key if not segments else key - segments[-1][1][-1] - 1  # frames a seek would skip
        if skipped > SEEK_MIN_GAP:
            segments.append((key, [i]))
        elif not segments:
            segments.append((None, [i]))
        else:
            segments[-1][1].append(i)
    return [(key, np.asarray(run)) for key, run in segments]


def _decode_wanted(
    path: Path, index: VideoIndex, wanted: np.ndarray, convert: _Converter
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, RGB array) for frames in sorted `wanted`; a missed seek falls back to the start."""
    done: set[int] = set()
    try:
        for i, frame in _decode_segments(path, index, plan_reads(index, wanted), convert):
            done.add(i)
            yield i, frame
        return
    except _SeekMissed as e:
        log.debug("%s: %s; decoding the rest from the start", path, e)
    rest = np.asarray([i for i in wanted.tolist() if i not in done], dtype=np.int64)
    if rest.size:
        yield from _decode_segments(path, index, [(None, rest)], convert)


def _decode_segments(
    path: Path, index: VideoIndex, segments: list[tuple[int | None, np.ndarray]], convert: _Converter
) -> Iterator[tuple[int, np.ndarray]]:
    import av

    container, stream = open_video(path)
    try:
        for key, run in segments:
            wanted, last = set(run.tolist()), int(run[-1])
            if index.timed:
                frames = _walk_timed(container, stream, index, key)
            else:
                frames = _walk_counted(container, stream, index, key, wanted)
            for i, frame in frames:
                if i in wanted:
                    yield i, convert(frame)
                if i >= last:
                    break
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: decoding failed ({e}); {_ERR_REENCODE}") from e
    finally:
        container.close()


def _seek(container, stream, index: VideoIndex, key: int) -> None:
    ts = int(index.seek_ts[int(np.searchsorted(index.keyframes, key))])
    # backward=True lands on the keyframe at or before ts; the frames that come out are then recognised.
    container.seek(ts, stream=stream, backward=True, any_frame=False)


def _position(pts: np.ndarray, value: int) -> int | None:
    """Index of `value` in the sorted `pts`, or None: a binary search, no per-call table for long videos."""
    i = int(np.searchsorted(pts, value))
    return i if i < len(pts) and int(pts[i]) == value else None


def _walk_timed(container, stream, index: VideoIndex, key: int | None) -> Iterator[tuple[int, object]]:
    """(frame number, decoded frame) from the start or from keyframe `key`, frames recognised by pts.

    From `key` (0 from the start) on, frame numbers must follow one another: a gap, a pts the index does not
    list or one out of order means pts do not number this video's frames as FFmpeg does (`_Contradicted`).
    Frames before `key` after a seek (an open GOP's leading frames) are decoded but not given.
    """
    if key is not None:
        _seek(container, stream, index, key)
    expected = 0 if key is None else key
    previous = -1
    for frame in container.decode(stream):
        i = None if frame.pts is None else _position(index.pts, frame.pts)
        if i is None or i <= previous:
            raise _Contradicted(f"decoded pts {frame.pts} is {'unlisted' if i is None else 'out of order'}")
        previous = i
        if i < expected and key is not None:
            continue
        if i != expected:
            if key is not None and expected == key:
                raise _SeekMissed(f"the seek to frame {key} gave frame {i} first")
            raise _Contradicted(f"frame {expected} was not decoded (frame {i} came next)")
        expected += 1
        yield i, frame


def _walk_counted(container, stream, index: VideoIndex, key: int | None, wanted: set[int]
                  ) -> Iterator[tuple[int, object]]:
    """(frame number, decoded frame) from the start (counted in output order) or from keyframe `key`.

    After a seek, counting starts at the frame whose checksum equals the keyframe's recorded one, and a frame in
    `wanted` is given only if its checksum equals the one recorded at its position: the same pixels as decoding
    from the start. (A frame lost or broken between the two shows as a mismatch at the next wanted frame.)
    """
    if key is None:
        for i, frame in enumerate(container.decode(stream)):
            yield i, frame
        return
    _seek(container, stream, index, key)
    sums = index.checksums
    expected, leading = key, 0
    for frame in container.decode(stream):
        if expected >= index.num_frames:
            raise _SeekMissed(f"the decoder gave more frames after a seek to frame {key} than from the start")
        if expected == key or expected in wanted:
            if checksum(frame) != int(sums[expected]):
                if expected != key:
                    raise _SeekMissed(f"after a seek to frame {key}, frame {expected} differs from the start's decode")
                leading += 1
                if leading > SEEK_MAX_LEADING:
                    raise _SeekMissed(f"the seek to frame {key} did not reach that frame")
                continue
        yield expected, frame
        expected += 1


def _decode_all(path: Path, size_hw: tuple[int, int] | None, autorotate: bool,
                times: BestEffortTimestamps | None = None) -> Iterator[np.ndarray]:
    """Every frame from the start, in FFmpeg's order; truncated or corrupt files raise `DataError`. Each frame's
    timestamps go to `times`, when given."""
    import av

    container, stream = open_video(path)
    if times is not None:
        times.time_base = Fraction(stream.time_base or 1)
    convert, count, tally = None, 0, PacketTally()
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise DataError(f"{path}: corrupt or truncated video data after frame {count}; {_ERR_REENCODE}")
            tally.add(packet)
            for frame in packet.decode():
                if convert is None:
                    convert = _Converter(size_hw, frame_orientation(frame).ops if autorotate else ())
                count += 1
                if times is not None:
                    times.add(frame.pts, frame.dts, frame.duration)
                yield convert(frame)
        tally.check(path, container, stream)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: decoding failed after frame {count} ({e}); {_ERR_REENCODE}") from e
    finally:
        container.close()
    if count == 0:
        raise DataError(f"{path}: no video frames could be decoded; {_ERR_REENCODE}")
