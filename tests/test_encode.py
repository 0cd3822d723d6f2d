"""write_video: decodes back to the same frames, atomic, exact under time reversal (intra-only)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from c3dnet.data.encode import write_video


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _frames(t: int = 20, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth gradients that move with t, plus a bright block whose row encodes the frame index."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        frames[i, ..., 0] = (xx * 3 + i * 7) % 256
        frames[i, ..., 1] = (yy * 4) % 256
        frames[i, ..., 2] = 60
        frames[i, 2 * i % (h - 4): 2 * i % (h - 4) + 4, :8] = 255
    return frames


@pytest.mark.parametrize("name,codec", [("v.avi", "mpeg4"), ("v.mp4", "libx264")])
def test_roundtrip(tmp_path, name, codec):
    frames = _frames()
    path = tmp_path / "sub" / name
    write_video(path, frames, fps=25.0, codec=codec)
    decoded = _decode(path)
    assert decoded.shape == frames.shape
    err = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
    assert err.mean() < 4.0  # 4:2:0 chroma costs a little on hard colour edges
    # Each decoded frame is closest to its own source frame: nothing dropped, duplicated or reordered.
    dist = np.abs(decoded[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(len(frames))).all()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("mpeg4", "h264")
        assert float(stream.average_rate) == pytest.approx(25.0)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind


def test_reverse_decodes_exactly(tmp_path):
    frames = _frames(25)
    write_video(tmp_path / "f.avi", frames)
    write_video(tmp_path / "r.avi", frames[::-1].copy())
    np.testing.assert_array_equal(_decode(tmp_path / "f.avi")[::-1], _decode(tmp_path / "r.avi"))


def test_deterministic_bytes(tmp_path):
    frames = _frames(10)
    write_video(tmp_path / "a.avi", frames)
    write_video(tmp_path / "b.avi", frames)
    assert (tmp_path / "a.avi").read_bytes() == (tmp_path / "b.avi").read_bytes()


def test_quality_is_the_fixed_quantiser(tmp_path):
    frames = _frames(10)
    errors = {}
    for q in (2, 20):
        write_video(tmp_path / f"q{q}.avi", frames, quality=q)
        errors[q] = np.abs(_decode(tmp_path / f"q{q}.avi").astype(np.int16) - frames).mean()
    assert errors[20] > errors[2] + 0.5
    assert (tmp_path / "q2.avi").stat().st_size > (tmp_path / "q20.avi").stat().st_size


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.avi", np.zeros((4, 16, 16, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.avi", np.zeros((4, 15, 16, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []
