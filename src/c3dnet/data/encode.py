"""Writing videos: uint8 RGB frames -> a video file through PyAV, atomically.

The default is what UCF-101 ships (MPEG-4 Part 2 in an .avi), coded intra-only at a fixed quantiser: each
frame's decoded pixels then depend on that frame alone, so a video written in reverse decodes to exactly the
reversed frames (the synthetic dataset's time-reversal pairs rely on this), and small synthetic frames are not
smeared by rate control.

Example:
    >>> import numpy as np
    >>> from c3dnet.data.encode import write_video
    >>> frames = np.zeros((25, 64, 80, 3), dtype=np.uint8)     # (T, H, W, 3) RGB
    >>> write_video("clip.avi", frames)                         # doctest: +SKIP
    >>> write_video("clip.mp4", frames, codec="libx264")        # doctest: +SKIP
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from c3dnet.errors import DataError
from c3dnet.fileio import atomic_path

DEFAULT_QUALITY = 2
"""MPEG-4 quantiser (1 best .. 31 worst); 2 keeps synthetic edges sharp at about 1 KB per 64x80 frame."""


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "mpeg4",
    quality: int = DEFAULT_QUALITY,
    intra_only: bool = True,
) -> None:
    """Encode `frames` as a video file at `path`, written to a temporary file beside it and renamed.

    Args:
        path: output file; its extension picks the container (.avi, .mp4, .mkv, ...).
        frames: (T, H, W, 3) uint8 RGB, T >= 1; H and W must be even (4:2:0 chroma).
        fps: frame rate stored in the container.
        codec: FFmpeg encoder name: "mpeg4" (MPEG-4 Part 2, as UCF-101) or "libx264" (H.264).
        quality: fixed quantiser; mpeg4: qscale 1..31, libx264: qp 0..51 (both: lower is better).
        intra_only: code every frame on its own (GOP size 1) so decoding is independent of frame order.

    Raises:
        ValueError: frames of the wrong shape or dtype.
        DataError: the encoder or the container cannot write the file.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"write_video needs frames of shape (T, H, W, 3) uint8 with T >= 1, "
                         f"got {frames.shape} {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"write_video needs an even frame height and width (4:2:0 video), got {height}x{width}")
    if not path.suffix:
        raise DataError(f"{path}: a video file needs an extension (.avi, .mp4, ...) to choose its container")

    # Same extension as the target, so FFmpeg picks the right container.
    with atomic_path(path, suffix=path.suffix) as tmp:
        _encode(str(tmp), path, frames, fps, codec, quality, intra_only)


def _encode(tmp: str, path: Path, frames: np.ndarray, fps: float, codec: str, quality: int, intra_only: bool) -> None:
    import av

    if codec == "mpeg4":
        if not 1 <= quality <= 31:
            raise ValueError(f"mpeg4 quality (qscale) must be in 1..31, got {quality}")
        # Fixed quantiser without rate control: +qscale with qmin = qmax pins every frame to `quality`.
        options = {"flags": "+qscale", "qmin": str(quality), "qmax": str(quality)}
    elif codec == "libx264":
        if not 0 <= quality <= 51:
            raise ValueError(f"libx264 quality (qp) must be in 0..51, got {quality}")
        options = {"qp": str(quality), "preset": "veryfast"}
    else:
        options = {}
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1  # one thread: the same bytes on every machine
            if intra_only:
                stream.codec_context.gop_size = 1
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush delayed frames
                container.mux(packet)
    except (av.FFmpegError, ValueError) as e:
        raise DataError(f"{path}: could not encode a video with codec {codec!r}: {e}; "
                        "check that FFmpeg (PyAV) has this encoder and that the container supports it") from e
