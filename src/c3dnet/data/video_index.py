"""Which frames a video holds, numbered exactly as FFmpeg numbers them: the index behind `c3dnet.data.decode`.

Frame i of a video is the i-th frame the FFmpeg command-line tool outputs
(`ffmpeg -i F -map 0:v:0 -fps_mode passthrough`): the i-th frame its decoder returns when decoding from the start.
Two kinds of index give that numbering.

- **Timed** (MP4/MOV and Matroska/WebM holding codecs that put one frame in each packet: H.264, HEVC, VP8/9, AV1,
  ...): one pass over the packets, with no decoding (about 1 ms for a UCF-101-sized video), lists every frame's
  presentation timestamp (pts); sorted, they give the frame count, a decoded frame is recognised by its pts, and
  reading may seek to any keyframe.
- **Counted** (everything else: AVI, whose timestamps are in decode order; MPEG-4 Part 2 with packed B-frames, as
  UCF-101 ships; MPEG-TS; raw streams; ...): pts cannot give display order, so the video is decoded once from the
  start, without colour conversion, and each output frame's position, keyframe flag and a checksum of its pixels
  are recorded. Reading decodes from the start and counts; it seeks to a keyframe only where every frame it keeps
  after the seek has the checksum recorded at its position, i.e. exactly the pixels decoding from the start gives.

A timed index that decoding contradicts (a decoded pts it does not list, or out of order, or a listed frame the
decoder skipped) is replaced by a counted one (`Video.index(counted=True)`). Packets whose data does not decode
are passed over as the FFmpeg CLI passes them over (`DecodeErrors`): the count is the frames the CLI outputs.

The builders take an open container; `c3dnet.data.video.Video` opens the file, caches the index and is told of
every packet and frame (limits, cancellation).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from c3dnet.data.orientation import NONE, Orientation, orientation_of
from c3dnet.data.records import VideoInfo
from c3dnet.data.timing import FrameTimes
from c3dnet.errors import DataError

TIMED_FORMATS = ("mov", "mp4", "matroska", "webm")
"""Containers whose packets carry presentation timestamps (`container.format.name` lists aliases, e.g.
'mov,mp4,m4a,3gp,3g2,mj2'). AVI stores decode order only; MPEG-TS/PS and raw streams are counted too."""

TIMED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "prores", "dnxhd", "ffv1", "png",
                          "rawvideo", "huffyuv", "utvideo", "qtrle", "theora", "vvc"})
"""Codecs that give one displayed frame per packet. MPEG-4 Part 2 is left out: its packets may hold two frames
(packed B-frames, as DivX/XviD write them even into Matroska) or none (a not-coded VOP)."""

_ERR_CORRUPT = "the file is corrupt or truncated: re-download or re-encode it, or remove it (or use --skip-bad)"


@dataclass(frozen=True)
class VideoIndex:
    """Per-video frame map (see the module docstring). Positions are frame numbers in FFmpeg's order.

    Attributes:
        num_frames: FFmpeg's frame count.
        fps: average frame rate.
        coded_hw: (height, width) of decoded frames before any turn.
        orientation: what the display matrix of the first frame asks for.
        timed: frames identified by pts (`pts`), else by decoding order from a start point (`checksums`).
        pts: timed only: the sorted pts of every frame.
        checksums: counted only: a checksum (CRC-32) of every frame's decoded planes.
        keyframes: sorted frame numbers where a seek may start (0 is implied: the start of the file).
        seek_ts: for each keyframe, the timestamp to pass to `container.seek` (stream time base).
        frame_ts: every frame's presentation timestamp in output order, as FFmpeg gives it
            (`best_effort_timestamp`, stream time base); None for streams without timestamps.
        last_duration: the last frame's duration (stream time base; 0: unknown).
        time_base: seconds per timestamp unit.
        errors: packets whose data did not decode (passed over, as the FFmpeg CLI does; counted only). A video
            with errors is read from the start with slice threads only, never by seeking.
    """

    num_frames: int
    fps: float
    coded_hw: tuple[int, int]
    orientation: Orientation
    timed: bool
    pts: np.ndarray | None
    checksums: np.ndarray | None
    keyframes: np.ndarray
    seek_ts: np.ndarray
    frame_ts: np.ndarray | None = None
    last_duration: int = 0
    time_base: Fraction = Fraction(1, 1)
    errors: int = 0

    def info(self, autorotate: bool = True) -> VideoInfo:
        h, w = self.coded_hw
        o = self.orientation if autorotate else NONE
        if o.swaps_axes:
            h, w = w, h
        return VideoInfo(self.num_frames, self.fps, h, w, o.describe(), self.orientation.rotation)

    def keyframe_before(self, i: int) -> int | None:
        """Position in `keyframes` of the last keyframe at or before frame i (None: none, start from frame 0)."""
        k = int(np.searchsorted(self.keyframes, i, side="right")) - 1
        return k if k >= 0 else None


# --------------------------------------------------------------------------------------------------- frames


def frame_orientation(frame) -> Orientation:
    """What a decoded frame's display matrix asks for (`NONE` without one)."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", str(sd.type)).upper().endswith("DISPLAYMATRIX"):
            return orientation_of(bytes(sd))
    return NONE


def checksum(frame) -> int:
    """CRC-32 of a decoded frame's visible bytes, plane by plane: what tells its pixels apart.

    Line padding is left out (its bytes are not part of the picture and need not repeat between decodes). 32 bits
    suffice: a frame is only compared with the one recorded at its own position, so a wrong frame passes with a
    chance of 2**-32, and a seek that gives wrong frames gives many.
    """
    crc = 0
    for index, plane in enumerate(frame.planes):
        size = plane.line_size * plane.height
        rows = np.frombuffer(plane, np.uint8)[:size].reshape(plane.height, plane.line_size)
        visible = min(plane.line_size, _row_bytes(frame, index, plane.width))
        crc = zlib.crc32(np.ascontiguousarray(rows[:, :visible]), crc)
    return crc


def _row_bytes(frame, plane_index: int, width: int) -> int:
    """Bytes of picture in one row of a plane: its width times the bytes its components take per pixel."""
    bits = sum(8 if c.bits <= 8 else 16 for c in frame.format.components if c.plane == plane_index)
    return -(-width * bits // 8)


# --------------------------------------------------------------------------------------------------- indexing


class PacketTally:
    """Counts a stream's packets as they are demuxed, to tell a complete file from one cut short.

    A file cut at a packet boundary (every packet whole, the end missing) holds fewer packets than its header
    declares (AVI and MP4 state their frame count; others give 0). AVI's count is the span of its frame
    timestamps instead: MEncoder's files declare one frame more than they hold chunks for (the timestamps skip
    it), and FFmpeg decodes them whole.
    """

    def __init__(self) -> None:
        self.present = 0
        self.first_dts: int | None = None
        self.last_dts: int | None = None

    def add(self, packet) -> None:
        if packet.size > 0 or packet.pts is not None:  # not the demuxer's final flush packet
            self.present += 1
        if packet.size > 0 and packet.dts is not None:
            self.first_dts = packet.dts if self.first_dts is None else self.first_dts
            self.last_dts = packet.dts

    def check(self, video: object, container, stream) -> None:
        """`DataError` naming `video` when the stream holds less than its header declares."""
        declared = int(stream.frames or 0)
        held = self.present
        if "avi" in container.format.name.split(",") and self.last_dts is not None:
            held = max(held, self.last_dts - self.first_dts + 1)
        if held < declared:
            raise DataError(f"{video}: truncated: the container declares {declared} frames but holds only {held}; "
                            f"{_ERR_CORRUPT}")


def _is_timed_container(container, stream) -> bool:
    names = set(container.format.name.split(","))
    return bool(names & set(TIMED_FORMATS)) and stream.codec_context.name in TIMED_CODECS


def timed_index(container, stream, video) -> VideoIndex | None:
    """The pts map from one pass over the packets of an open `container`, or None where pts cannot identify
    frames. `video` (a `c3dnet.data.video.Video`) names the file in errors and is told of every packet."""
    import av

    try:
        if not _is_timed_container(container, stream):
            return None
        pts, key_pts, key_ts, first_frame, tally = [], [], [], None, PacketTally()
        last_pts, last_duration = None, 0  # the last frame shown, and how long
        for packet in container.demux(stream):
            video.on_packet()
            if packet.is_corrupt:  # the demuxer flags packets cut short by truncation
                raise DataError(f"{video}: corrupt or truncated video data at packet {tally.present}; "
                                f"{_ERR_CORRUPT}")
            if first_frame is None:
                for frame in packet.decode():  # the display matrix travels with the frames
                    first_frame = frame
                    break
            tally.add(packet)
            if packet.size == 0 or packet.is_discard:  # frames an edit list leaves out are not output
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            if last_pts is None or packet.pts > last_pts:
                last_pts, last_duration = packet.pts, int(packet.duration or 0)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
                key_ts.append(packet.dts if packet.dts is not None else packet.pts)
        pts_arr = np.asarray(pts, dtype=np.int64)
        if not pts or len(np.unique(pts_arr)) != len(pts_arr):
            return None  # two frames at one pts cannot be told apart by pts
        tally.check(video, container, stream)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        height, width = stream.codec_context.height, stream.codec_context.width
        time_base = Fraction(stream.time_base or 1)
    except av.InvalidDataError:
        return None  # the first frame does not decode: counting by decoding tells what FFmpeg makes of it
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{video}: cannot read the video's packets ({e}); {_ERR_CORRUPT}") from e
    if height <= 0 or width <= 0:
        raise DataError(f"{video}: the video stream has no frame size; {_ERR_CORRUPT}")
    pts_arr.sort()
    keyframes = np.searchsorted(pts_arr, np.asarray(key_pts, dtype=np.int64))
    order = np.argsort(keyframes, kind="stable")  # `keyframe_before` and `_seek` search them sorted
    orientation = frame_orientation(first_frame) if first_frame is not None else NONE
    return VideoIndex(len(pts_arr), fps, (height, width), orientation, True, pts_arr, None,
                      keyframes[order].astype(np.int64), np.asarray(key_ts, dtype=np.int64)[order],
                      pts_arr, last_duration, time_base)


class DecodeErrors:
    """Decodes packets as the FFmpeg CLI does: a packet whose data does not decode gives no frame, is counted,
    and decoding goes on with the next packet (the CLI logs "Error while decoding stream" and goes on)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def decode(self, packet, frames_so_far: int) -> list:
        import av

        try:
            return packet.decode()
        except av.InvalidDataError as e:
            self.count += 1
            if self.first is None:
                self.first = f"the packet after frame {frames_so_far} does not decode ({e})"
            return []


def counted_index(container, stream, video) -> VideoIndex:
    """The frame map from decoding every frame of an open `container` once, in FFmpeg's output order, with
    checksums and seek points.

    Packets whose data does not decode are passed over, as the FFmpeg CLI passes them over: the count is the
    frames it outputs, and `errors` says how many packets gave none. Decode with slice threads only (frame
    threads lose the frames in flight when a corrupt packet ends the stream)."""
    import av

    errors = DecodeErrors()
    try:
        key_ts, has_ts, tally = [], True, PacketTally()
        checksums, key_positions, orientation, coded_hw = [], [], NONE, None
        times = BestEffortTimestamps()
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise DataError(f"{video}: corrupt or truncated video data at packet {tally.present}; "
                                f"{_ERR_CORRUPT}")
            tally.add(packet)
            if packet.size > 0 and packet.is_keyframe and not packet.is_discard:
                ts = packet.dts if packet.dts is not None else packet.pts
                has_ts &= ts is not None
                key_ts.append(ts if ts is not None else -1)
            for frame in errors.decode(packet, len(checksums)):  # the final, empty packet flushes
                video.on_frame(frame)
                if not checksums:
                    orientation, coded_hw = frame_orientation(frame), (frame.height, frame.width)
                if frame.key_frame:
                    key_positions.append(len(checksums))
                checksums.append(checksum(frame))
                times.add(frame.pts, frame.dts, frame.duration)
        tally.check(video, container, stream)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        time_base = Fraction(stream.time_base or 1)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{video}: decoding failed at frame {len(checksums)} ({e}); {_ERR_CORRUPT}") from e
    if not checksums:
        raise DataError(f"{video}: no video frames could be decoded; {_ERR_CORRUPT}")
    # The k-th keyframe packet (decode order) holds the k-th keyframe the decoder outputs. Where the counts
    # disagree, or timestamps are missing (raw streams), reading never seeks: it decodes from the start.
    if has_ts and len(key_ts) == len(key_positions) and key_positions and not errors.count:
        keyframes, seek_ts = np.asarray(key_positions, np.int64), np.asarray(key_ts, np.int64)
    else:
        keyframes, seek_ts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return VideoIndex(len(checksums), fps, coded_hw, orientation, False, None,
                      np.asarray(checksums, dtype=np.uint32), keyframes, seek_ts, times.array(), times.last_duration,
                      time_base, errors.count)


class BestEffortTimestamps:
    """Frame timestamps in output order, as FFmpeg times decoded frames.

    First choice is FFmpeg's `best_effort_timestamp` (libavcodec's `guess_correct_pts`: a frame's pts unless pts
    have gone backwards more often than dts, else its dts). AVI stores decode-order timestamps only, and FFmpeg
    versions differ on the pts they give reordered AVI frames (PyAV's FFmpeg gives B-frames pts that go backwards
    where FFmpeg 5's CLI gives none), so where those are not all present and increasing, each frame's packet dts
    is taken: in AVI it counts frame slots in output order, as `ffprobe -show_frames` reports them. Frames flushed
    at the end without a timestamp follow the one before by its duration, as the FFmpeg CLI times them.
    """

    def __init__(self, time_base: Fraction = Fraction(1, 1)) -> None:
        self.time_base = time_base  # of the stream whose frames are added
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None
        self.best: list[int | None] = []
        self.dts: list[int | None] = []
        self.durations: list[int] = []

    def add(self, pts: int | None, dts: int | None, duration: int | None) -> None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        self.best.append(pts if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None) else dts)
        self.dts.append(dts)
        self.durations.append(int(duration or 0))

    @property
    def last_duration(self) -> int:
        """The last frame's duration (0: unknown)."""
        return self.durations[-1] if self.durations else 0

    def frame_times(self) -> FrameTimes | None:
        """The frames' times (`data.timing`), or None when they have no usable timestamps."""
        ts = self.array()
        return None if ts is None else FrameTimes.from_timestamps(ts, self.last_duration, self.time_base)

    def array(self) -> np.ndarray | None:
        """The timestamps, or None when neither kind increases throughout (the frame rate then times them)."""
        for values in (self.best, self.dts):
            ts = _fill_trailing(values, self.durations)
            if ts is not None and bool(np.all(np.diff(ts) > 0)):
                return ts
        return None


def _fill_trailing(values: list[int | None], durations: list[int]) -> np.ndarray | None:
    """`values` with trailing Nones continued by each frame's duration (1 where unknown); None if others miss."""
    n = len(values)
    while n and values[n - 1] is None:
        n -= 1
    if n == 0 or any(v is None for v in values[:n]):
        return None
    filled = list(values)
    for i in range(n, len(filled)):
        filled[i] = filled[i - 1] + max(durations[i - 1], 1)
    return np.asarray(filled, dtype=np.int64)
