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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from c3dnet.data.folders import FRAME_START, FRAME_TEMPLATE, folder_info, read_folder
from c3dnet.data.orientation import orient
from c3dnet.data.records import VideoInfo
from c3dnet.data.resize import resize_frames, resize_image
from c3dnet.data.timing import FrameTimes, folder_times
from c3dnet.data.video import CORRUPT_NOTE, Video, note_once, set_decode_threads
from c3dnet.data.video_index import (
    BestEffortTimestamps,
    DecodeErrors,
    PacketTally,
    VideoIndex,
    checksum,
    frame_orientation,
)
from c3dnet.errors import DataError
from c3dnet.log import get_logger

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

T = TypeVar("T")

__all__ = ["FRAME_START", "FRAME_TEMPLATE", "SEEK_MIN_GAP", "ArrayVideo", "FrameCountChanged", "Video", "VideoInfo",
           "as_source", "count_frames", "iter_frames", "plan_reads", "read_frames", "replanned", "set_decode_threads",
           "video_info", "video_times"]

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


class FrameCountChanged(DataError):
    """Decoding showed that a video holds fewer frames than its container lists (corrupt data that FFmpeg passes
    over), after frames were asked for by the listed count: plan the clips again from `count_frames`."""


def replanned(work: Callable[[], T]) -> T:
    """`work()`, which counts a video's frames, plans from that count and reads, done once more if decoding
    showed the count wrong (`FrameCountChanged`): by then the video's index holds FFmpeg's count."""
    try:
        return work()
    except FrameCountChanged:
        return work()


def as_source(record_or_path: VideoRecord | str | os.PathLike[str] | ArrayVideo | Video) -> Path | ArrayVideo | Video:
    """What the reading functions read: a `Video` (a file path becomes one, with this process's defaults), an
    `ArrayVideo`, or the `Path` of a frame folder. A `VideoRecord` gives its `path`."""
    if isinstance(record_or_path, (ArrayVideo, Video)):
        return record_or_path
    source = getattr(record_or_path, "path", record_or_path)
    if isinstance(source, (ArrayVideo, Video)):
        return source
    path = Path(source)
    return path if path.is_dir() else Video(path)


# --------------------------------------------------------------------------------------------------- public API


def count_frames(record_or_path: VideoRecord | str | os.PathLike[str] | ArrayVideo | Video) -> int:
    """Number of frames in a video file (FFmpeg's count) or frame folder (cached per file).

    A `VideoRecord` whose `num_frames` is known (frame folders from an annotation list) returns it unchecked.
    """
    known = None if isinstance(record_or_path, Video) else getattr(record_or_path, "num_frames", None)
    if known is not None:
        return int(known)
    return video_info(record_or_path).num_frames


def video_info(path: str | os.PathLike[str] | ArrayVideo | Video, autorotate: bool = True) -> VideoInfo:
    """Frame count, frame rate, frame size (as returned: turned unless `autorotate=False`) and orientation."""
    source = as_source(path)
    if isinstance(source, (ArrayVideo, Video)):
        return source.info() if isinstance(source, ArrayVideo) else source.info(autorotate)
    return folder_info(source)


def video_times(path: str | os.PathLike[str] | ArrayVideo | Video, source_fps: Fraction | None = None) -> FrameTimes:
    """The frame times of a video file, frame folder or `ArrayVideo` (see `c3dnet.data.timing`)."""
    source = as_source(path)
    if isinstance(source, ArrayVideo):
        fps = source_fps or (Fraction(source.fps).limit_denominator(1001) if source.fps > 0 else None)
        if fps is None:
            raise DataError(f"{source}: frames in memory have no frame rate; give one (ArrayVideo(fps=...))")
        return FrameTimes.constant(len(source.frames), fps)
    if isinstance(source, Video):
        return source.times(source_fps)
    return folder_times(source, folder_info(source).num_frames, source_fps)


def read_frames(
    record: VideoRecord | str | os.PathLike[str] | ArrayVideo | Video,
    indices: np.ndarray,
    size_hw: tuple[int, int] | None = None,
    *,
    template: str = FRAME_TEMPLATE,
    start_index: int = FRAME_START,
    autorotate: bool = True,
) -> np.ndarray:
    """Frames at `indices` (0-based, any order, repeats allowed) as uint8 (len(indices), H, W, 3) RGB.

    Args:
        record: a `VideoRecord` or a path to a video file or a frame folder, an `ArrayVideo` or a `Video`.
        indices: frame indices, each in [0, num_frames).
        size_hw: resize every frame to (height, width) (OpenCV `INTER_LINEAR`), after turning it.
        template: frame file name pattern in frame folders.
        start_index: number of the first frame file in frame folders.
        autorotate: turn video frames as their display matrix says (FFmpeg's default); False keeps the coded
            orientation.

    Raises:
        DataError: unreadable or corrupt file, missing frame file, or an index past the end
            (`FrameCountChanged` where decoding showed fewer frames than the container lists).
    """
    source = as_source(record)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("read_frames needs at least one frame index")
    if isinstance(source, ArrayVideo):
        return source.read(indices, size_hw)
    if isinstance(source, Video):
        return _read_video(source, indices, size_hw, autorotate)
    return read_folder(source, indices, size_hw, template, start_index)


def iter_frames(
    path: str | os.PathLike[str] | ArrayVideo | Video,
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
    source = as_source(path)
    if isinstance(source, ArrayVideo):
        for lo in range(0, len(source.frames), chunk):
            yield source.read(np.arange(lo, min(len(source.frames), lo + chunk)), size_hw)
        return
    if not isinstance(source, Video):
        n = folder_info(source, template, start_index).num_frames
        for lo in range(0, n, chunk):
            yield read_folder(source, np.arange(lo, min(n, lo + chunk)), size_hw, template, start_index)
        return
    buf: list[np.ndarray] = []
    for frame in _decode_all(source, size_hw, autorotate, times):
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
    So do interlaced frames (DV, broadcast TS): PyAV's FFmpeg converts those field by field, where the CLI's
    `scale` filter treats them as progressive (a DV file differed from the CLI by a mean of 0.9 and up to 255).
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
        if fmt in _UNSCALED_RGB and frame.width % 2 == 0 and frame.height % 2 == 0 and not frame.interlaced_frame:
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


def _read_video(video: Video, indices: np.ndarray, size_hw: tuple[int, int] | None, autorotate: bool) -> np.ndarray:
    index = video.index()
    listed = index.num_frames
    while True:
        n = index.num_frames
        if indices.min() < 0 or indices.max() >= n:
            bad = int(indices.max()) if indices.max() >= n else int(indices.min())
            if n < listed:
                raise FrameCountChanged(f"{video}: FFmpeg decodes {n} of the {listed} frames its container lists "
                                        f"(corrupt data), so frame {bad} is past its end; count its frames again")
            raise DataError(f"{video}: frame index {bad} is outside the video's {n} frames; the annotation's frame "
                            "count may be wrong")
        wanted = np.unique(indices)  # sorted
        convert = _Converter(size_hw, index.orientation.ops if autorotate else ())
        try:
            got = dict(_decode_wanted(video, index, wanted, convert))
            lost = np.asarray([i for i in wanted.tolist() if i not in got], dtype=np.int64)
            if lost.size and index.errors:  # dropped by frame threads at the flush after corrupt data
                got.update(_decode_segments(video, index, [(None, lost)], convert, "SLICE"))
        except _Contradicted as e:
            log.debug("%s: %s; counting frames instead", video, e)
            index = video.index(counted=True)
            continue
        missing = [int(i) for i in wanted if int(i) not in got]
        if missing and index.timed:  # listed frames the decoder never gave: the pts list is not FFmpeg's count
            index = video.index(counted=True)
            continue
        if missing:
            raise DataError(f"{video}: frames {missing[:5]} could not be decoded (of {n}); {_ERR_REENCODE}")
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


def _decode_wanted(video: Video, index: VideoIndex, wanted: np.ndarray, convert: _Converter
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, RGB array) for frames in sorted `wanted`; a missed seek falls back to the start."""
    done: set[int] = set()
    try:
        for i, frame in _decode_segments(video, index, plan_reads(index, wanted), convert):
            done.add(i)
            yield i, frame
        return
    except _SeekMissed as e:
        log.debug("%s: %s; decoding the rest from the start", video, e)
    rest = np.asarray([i for i in wanted.tolist() if i not in done], dtype=np.int64)
    if rest.size:
        yield from _decode_segments(video, index, [(None, rest)], convert)


def _frames(container, stream, video: Video, errors: DecodeErrors) -> Iterator[object]:
    """The stream's decoded frames in output order, passing over packets that do not decode (as the CLI does);
    each is shown to `video` (its limits, its guard) first."""
    count = 0
    for packet in container.demux(stream):
        for frame in errors.decode(packet, count):
            video.on_frame(frame)
            count += 1
            yield frame


def _decode_segments(video: Video, index: VideoIndex, segments: list[tuple[int | None, np.ndarray]],
                     convert: _Converter, thread_type: str = "AUTO") -> Iterator[tuple[int, np.ndarray]]:
    """Frames of `segments` (`plan_reads`). Frame threads (`thread_type` "AUTO") give the FFmpeg CLI's pixels,
    which uses them too, also where corrupt data is concealed; after such data, a frame-threaded decoder's flush
    drops the frames still in flight, which "SLICE" (no frame threads) then gives."""
    import av

    container, stream = video.open(thread_type)
    try:
        for key, run in segments:
            wanted, last = set(run.tolist()), int(run[-1])
            if key is not None:
                _seek(container, stream, index, key)
            decoded = _frames(container, stream, video, DecodeErrors())
            if index.timed:
                frames = _walk_timed(decoded, index, key)
            else:
                frames = _walk_counted(decoded, index, key, wanted)
            for i, frame in frames:
                if i in wanted:
                    yield i, convert(frame)
                if i >= last:
                    break
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{video}: decoding failed ({e}); {_ERR_REENCODE}") from e
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


def _walk_timed(decoded: Iterator[object], index: VideoIndex, key: int | None) -> Iterator[tuple[int, object]]:
    """(frame number, decoded frame) from the start or from keyframe `key` (already sought), frames recognised by
    pts.

    From `key` (0 from the start) on, frame numbers must follow one another: a gap, a pts the index does not
    list or one out of order means pts do not number this video's frames as FFmpeg does (`_Contradicted`).
    Frames before `key` after a seek (an open GOP's leading frames) are decoded but not given.
    """
    expected = 0 if key is None else key
    previous = -1
    for frame in decoded:
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


def _walk_counted(decoded: Iterator[object], index: VideoIndex, key: int | None, wanted: set[int]
                  ) -> Iterator[tuple[int, object]]:
    """(frame number, decoded frame) from the start (counted in output order) or from keyframe `key` (already
    sought).

    After a seek, counting starts at the frame whose checksum equals the keyframe's recorded one, and a frame in
    `wanted` is given only if its checksum equals the one recorded at its position: the same pixels as decoding
    from the start. (A frame lost or broken between the two shows as a mismatch at the next wanted frame.)
    """
    if key is None:
        yield from enumerate(decoded)
        return
    sums = index.checksums
    expected, leading = key, 0
    for frame in decoded:
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


def _decode_all(video: Video, size_hw: tuple[int, int] | None, autorotate: bool,
                times: BestEffortTimestamps | None = None) -> Iterator[np.ndarray]:
    """Every frame from the start, in FFmpeg's order; truncated files raise `DataError`. Each frame's timestamps
    go to `times`, when given.

    Packets that do not decode are passed over, as the FFmpeg CLI passes them over, with a warning naming the file.
    Frame threads decode only a video whose index is known (cached, or a timed one, which costs one pass over
    the packets) and free of such packets; should they still lose frames at the end (corrupt data the index
    could not show), the missing frames are decoded again with slice threads.
    """
    index = _known_index(video)
    thread_type = "SLICE" if index is None else "AUTO"
    count, errors = 0, DecodeErrors()
    for frame in _decode_pass(video, thread_type, size_hw, autorotate, times, 0, errors):
        count += 1
        yield frame
    if thread_type == "AUTO" and index is not None and count < index.num_frames:
        # frames that a frame-threaded decoder dropped at its flush: the same file decoded without frame threads
        for frame in _decode_pass(video, "SLICE", size_hw, autorotate, times, count, DecodeErrors()):
            count += 1
            yield frame
    if errors.count:
        note_once(video, CORRUPT_NOTE.format(count=count), topic="corrupt")
    if index is not None and index.timed and count < index.num_frames:
        video.index(counted=True)  # the container lists frames FFmpeg does not decode: count them as it does
    if count == 0:
        raise DataError(f"{video}: no video frames could be decoded; {_ERR_REENCODE}")


def _known_index(video: Video) -> VideoIndex | None:
    """The video's index where it costs no decoding: cached, or timed (a pass over the packets); None for a
    counted video not yet indexed. A video decoded on one thread needs none (no frame threads to drop frames)."""
    if video.decode_threads == 1:
        hit = video.cached_index()
        return hit if hit is not None and hit.errors else None
    return video.cheap_index()


def _decode_pass(video: Video, thread_type: str, size_hw: tuple[int, int] | None, autorotate: bool,
                 times: BestEffortTimestamps | None, skip: int, errors: DecodeErrors) -> Iterator[np.ndarray]:
    """The frames of one decoding from the start, after the first `skip`, converted; `errors` counts the packets
    that gave none."""
    import av

    container, stream = video.open(thread_type)
    if times is not None and skip == 0:
        times.time_base = Fraction(stream.time_base or 1)
    convert, count, tally = None, 0, PacketTally()
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise DataError(f"{video}: corrupt or truncated video data after frame {count}; {_ERR_REENCODE}")
            tally.add(packet)
            for frame in errors.decode(packet, count):
                video.on_frame(frame)
                count += 1
                if count <= skip:
                    continue
                if convert is None:
                    convert = _Converter(size_hw, frame_orientation(frame).ops if autorotate else ())
                if times is not None:
                    times.add(frame.pts, frame.dts, frame.duration)
                yield convert(frame)
        tally.check(video, container, stream)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{video}: decoding failed after frame {count} ({e}); {_ERR_REENCODE}") from e
    finally:
        container.close()
