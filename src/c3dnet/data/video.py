"""`Video`: one video file and everything about how it is read, as torchcodec's `VideoDecoder` owns its stream.

A `Video` knows how to open its file (the demuxer, FFmpeg's options, the decoder threads), which limits it is held
to (`FrameLimits`, checked from the header before any frame is decoded and on every decoded frame), who may stop
its decoding (`DecodeGuard`), and its frame index (`c3dnet.data.video_index`), kept in a per-process cache keyed by
the file's version. `c3dnet.data.decode` reads frames through it; its functions take a `Video` wherever they take
a path.

Example:
    >>> v = Video("v_Drumming_g01_c01.avi")                        # doctest: +SKIP
    >>> v.info().num_frames, v.times().num_frames                   # doctest: +SKIP
    (164, 164)
    >>> upload = Video(tmp, demuxer="mov", name="clip.mp4", threads=1,
    ...                limits=FrameLimits(max_pixels=4096 * 2304, max_aspect=4))   # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from fractions import Fraction
from pathlib import Path

from c3dnet.data.containers import describe_demuxer, open_options
from c3dnet.data.records import DecodeGuard, FrameLimits, MemoryLRU, NotAVideo, NoVideoStream, VideoInfo, file_key
from c3dnet.data.timing import FrameTimes
from c3dnet.data.video_index import PacketTally, VideoIndex, counted_index, timed_index
from c3dnet.errors import DataError
from c3dnet.log import get_logger

log = get_logger(__name__)

INDEX_CACHE_BYTES = 256 * 2**20
"""Memory the per-process index cache may hold: all of UCF-101's 13,320 indices take about 40 MB."""

index_cache = MemoryLRU(INDEX_CACHE_BYTES)
"""Frame indices by (path, size, mtime, demuxer), shared by every `Video` of this process (loader processes and
threads reuse what another call built)."""

_ERR_CORRUPT = "the file is corrupt or truncated: re-download or re-encode it, or remove it (or use --skip-bad)"

_default_threads = 0  # FFmpeg threads per open video where a Video sets none; 0 lets FFmpeg choose
_noted: set[tuple[str, str]] = set()  # (file, topic) logged once per process
_noted_lock = threading.Lock()


def set_decode_threads(n: int) -> None:
    """FFmpeg's decoding threads per open video in this process, for `Video`s that do not set their own (0:
    FFmpeg's choice, one per core).

    Where many loader processes or extraction threads each decode a video, one thread apiece avoids
    oversubscribing the cores; a single decoder is faster with FFmpeg's own threads. This is the one process-wide
    decoding setting: loader processes set it as they start.
    """
    global _default_threads
    if n < 0:
        raise ValueError(f"decode threads must be >= 0, got {n}")
    _default_threads = int(n)


CORRUPT_NOTE = ("holds data that does not decode (corrupt); passed over as the FFmpeg CLI passes it over: these are "
                "the {count} frames FFmpeg decodes from it")


def note_once(where: object, message: str, level: str = "warning", topic: str | None = None) -> None:
    """Log `where: message` once per process and `topic` (default: the message), as a dataset would otherwise
    repeat it for every read."""
    key = (str(where), topic or message)
    with _noted_lock:
        if key in _noted:
            return
        _noted.add(key)
    getattr(log, level)("%s: %s", where, message)


class Video:
    """A video file, how it is opened, and its frame index.

    Args:
        path: the file.
        demuxer: the FFmpeg demuxer to open it with (no probing) and `protocol_whitelist=file`, for files someone
            else sent (`c3dnet.data.containers.choose_demuxer`); None: FFmpeg probes, as for the user's own files.
        name: what messages call it (an upload's own name, not its temporary path); default: the path.
        limits: the largest frames it may have; None: any.
        guard: ticked while it decodes (cancellation, CPU budgets, time slices); None: nobody stops it.
        threads: FFmpeg decoding threads (0: FFmpeg's choice); None: the process default (`set_decode_threads`).
    """

    def __init__(self, path: str | os.PathLike[str], *, demuxer: str | None = None, name: str | None = None,
                 limits: FrameLimits | None = None, guard: DecodeGuard | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.demuxer, self.name, self.limits, self.guard, self.threads = demuxer, name, limits, guard, threads

    def __str__(self) -> str:
        return self.name or str(self.path)

    def __repr__(self) -> str:
        return f"Video({str(self.path)!r}" + (f", demuxer={self.demuxer!r}" if self.demuxer else "") + ")"

    def __fspath__(self) -> str:
        return str(self.path)

    def is_dir(self) -> bool:  # a `VideoRecord` holding one is not a frame folder
        return False

    @property
    def decode_threads(self) -> int:
        return _default_threads if self.threads is None else self.threads

    # ----------------------------------------------------------------------------------------------- opening

    def open(self, thread_type: str = "AUTO"):  # -> (container, stream)
        """The container and its first video stream, with a decoder set up and the frame size checked against
        `limits` (from the header: nothing is decoded yet); `DataError` naming the video if not."""
        import av

        path = self.path
        if not path.exists():
            raise DataError(f"{self}: video file not found; check the path (and the dataset root)")
        if path.stat().st_size == 0:
            raise DataError(f"{self}: video file is empty (0 bytes); re-download or remove it (or use --skip-bad)")
        try:
            container = av.open(str(path), format=self.demuxer, options=open_options(self.demuxer),
                                metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
            raise NotAVideo(f"{self}: not a readable video ({str(e).replace(str(path), str(self))}); the file is "
                            "corrupt or not a video: re-download or remove it (or use --skip-bad)") from e
        try:
            stream = self._video_stream(container)
            stream.thread_type = thread_type
            if self.decode_threads:
                stream.codec_context.thread_count = self.decode_threads
        except BaseException:
            container.close()
            raise
        if self.demuxer is None:
            note = describe_demuxer(container.format.name)
            if note is not None:
                note_once(self, note, "info")
        return container, stream

    def _video_stream(self, container):
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise NoVideoStream(f"{self}: has no video stream (it holds {kinds}); remove it from the dataset (or use "
                                "--skip-bad)")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg found a video stream but has no decoder for its codec
            raise DataError(f"{self}: no decoder for this video's codec; re-encode it (e.g. to H.264) or remove it "
                            "(or use --skip-bad)")
        if self.limits is not None:
            cc = stream.codec_context
            self.limits.check(cc.width, cc.height, self)
        return stream

    def on_frame(self, frame) -> None:
        """Called for every decoded frame: the size limit (a stream may change size midway) and the guard."""
        if self.limits is not None:
            self.limits.check(frame.width, frame.height, self)
        if self.guard is not None:
            self.guard.tick()

    def on_packet(self) -> None:
        """Called for every packet of a pass that does not decode (indexing by pts, `scan`)."""
        if self.guard is not None:
            self.guard.tick()

    # ----------------------------------------------------------------------------------------------- the index

    def _key(self) -> tuple:
        return (*file_key(self.path), self.demuxer)

    def cached_index(self) -> VideoIndex | None:
        """The index if this process has it already (no work), else None."""
        return index_cache.get(self._key())

    def cheap_index(self) -> VideoIndex | None:
        """The index where it costs no decoding: cached, or timed (built now from one pass over the packets);
        None for a video that only decoding can index."""
        hit = self.cached_index()
        if hit is not None:
            return hit
        index = self._timed_index()
        if index is not None:
            index_cache.put(self._key(), index)
        return index

    def _timed_index(self) -> VideoIndex | None:
        container, stream = self.open()
        try:
            return timed_index(container, stream, self)
        finally:
            container.close()

    def index(self, counted: bool = False) -> VideoIndex:
        """The frame map (cached per file version); `counted=True` forces the decoding kind (see
        `c3dnet.data.video_index`)."""
        key = self._key()
        hit = index_cache.get(key)
        if hit is not None and (not hit.timed or not counted):
            return hit
        index = None if counted else self._timed_index()
        if index is None:
            # One thread per slice, never frame threads: a frame-threaded decoder that meets corrupt data loses the
            # frames still in flight when it is flushed, where the FFmpeg CLI gives them.
            container, stream = self.open("SLICE")
            try:
                index = counted_index(container, stream, self)
            finally:
                container.close()
            if index.errors:
                note_once(self, CORRUPT_NOTE.format(count=index.num_frames), topic="corrupt")
        index_cache.put(key, index)
        return index

    @property
    def num_frames(self) -> int:
        return self.index().num_frames

    def info(self, autorotate: bool = True) -> VideoInfo:
        """Frame count, frame rate, frame size (as returned: turned unless `autorotate=False`) and orientation."""
        return self.index().info(autorotate)

    def times(self, source_fps: Fraction | None = None) -> FrameTimes:
        """When each frame is shown (FFmpeg's `best_effort_timestamp`s; `source_fps` for streams without
        timestamps, which only their frame rate times)."""
        index = self.index()
        if index.frame_ts is None:
            fps = source_fps or (Fraction(index.fps).limit_denominator(1001) if index.fps > 0 else None)
            if fps is None:
                raise DataError(f"{self}: the stream has no timestamps and no frame rate; pass --source-fps")
            return FrameTimes.constant(index.num_frames, fps)
        return FrameTimes.from_timestamps(index.frame_ts, index.last_duration, index.time_base)

    def scan(self) -> tuple[int, float]:
        """(packets, seconds) of the video stream from one pass over its packets, decoding nothing: how long it is
        before any work is spent decoding it (an AVI's frames are otherwise counted by decoding them all)."""
        import av

        container, stream = self.open()
        tally = PacketTally()
        low = high = None
        tb = float(stream.time_base or 0)
        try:
            for packet in container.demux(stream):
                self.on_packet()
                tally.add(packet)
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None and packet.size > 0:
                    end = ts + int(packet.duration or 0)
                    low = ts if low is None else min(low, ts)
                    high = end if high is None else max(high, end)
            declared = float(container.duration or 0) / 1e6  # microseconds
            rate = float(stream.average_rate or stream.guessed_rate or 0)
        except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{self}: cannot read the video's packets ({e}); {_ERR_CORRUPT}") from e
        finally:
            container.close()
        spans = [declared]
        if low is not None and tb > 0:
            spans.append((high - low) * tb)
        if rate > 0:
            spans.append(tally.present / rate)
        return tally.present, max(spans)
