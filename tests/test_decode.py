"""Decoding: frame accuracy (with and without seeks) for MPEG-4 .avi and H.264 .mp4, frame folders, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from c3dnet.data import decode
from c3dnet.data.decode import count_frames, iter_frames, read_frames, video_info
from c3dnet.data.sources import VideoRecord
from c3dnet.data.video import Video
from c3dnet.errors import DataError
from tests.media import REAL_VIDEOS, index_frames, read_index, real_videos, write_index_video

N = 150


@pytest.fixture(scope="module", params=[("mpeg4", ".avi"), ("libx264", ".mp4")], ids=["avi-mpeg4", "mp4-h264"])
def index_video(request, tmp_path_factory) -> Path:
    codec, ext = request.param
    return write_index_video(tmp_path_factory.mktemp("v") / f"idx{ext}", N, codec=codec)


def test_index_code_roundtrip():
    frames = index_frames(300)
    assert [read_index(f) for f in frames] == list(range(300))


def test_info_and_count(index_video):
    info = video_info(index_video)
    assert (info.num_frames, info.height, info.width) == (N, 64, 160)
    assert info.fps == pytest.approx(25.0)
    assert count_frames(index_video) == N
    assert count_frames(VideoRecord(index_video, 0)) == N
    assert count_frames(VideoRecord(index_video, 0, num_frames=7)) == 7  # a known count is trusted


def test_keyframes_and_segments(index_video, monkeypatch):
    index = Video(index_video).index()
    # MP4 is timed (frames known by pts, no decoding); AVI stores decode order only, so it is counted
    assert index.timed == (index_video.suffix == ".mp4")
    assert (index.pts is None) == (index.checksums is not None)
    assert index.keyframes.tolist() == list(range(0, N, 12))  # GOP 12 in both test videos
    assert index.keyframes[index.keyframe_before(30)] == 24 and index.keyframe_before(0) == 0
    monkeypatch.setattr(decode, "SEEK_MIN_GAP", 16)
    runs = decode.plan_reads(index, np.array([5, 6, 100, 101, 112, 140]))
    # frame 5: read on from the start; 100: seek to 96 (skips > 16 frames); 112 is 11 frames on: read on; 140: seek
    assert [(k, r.tolist()) for k, r in runs] == [(None, [5, 6]), (96, [100, 101, 112]), (132, [140])]
    assert [(k, r.tolist()) for k, r in decode.plan_reads(index, np.array([40, 41]))] == [(36, [40, 41])]


def test_seeks_are_taken_and_verified(index_video, monkeypatch, caplog):
    """Every seek lands where planned and its frames are accepted: no fallback to decoding from the start."""
    monkeypatch.setattr(decode, "SEEK_MIN_GAP", 0)
    caplog.set_level("DEBUG", logger="c3dnet.data.decode")
    idx = np.array([30, 31, 77, 120, 149])
    assert [read_index(f) for f in read_frames(index_video, idx)] == idx.tolist()
    assert not [r for r in caplog.records if "from the start" in r.getMessage() or "instead" in r.getMessage()]


@pytest.mark.parametrize("seek_gap", [0, 16, 10_000], ids=["always-seek", "default", "never-seek"])
def test_frame_accurate(index_video, seek_gap, monkeypatch):
    monkeypatch.setattr(decode, "SEEK_MIN_GAP", seek_gap)
    idx = np.array([120, 5, 149, 60, 61, 62, 5, 0, 97, 13])
    frames = read_frames(index_video, idx)
    assert frames.shape == (len(idx), 64, 160, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == idx.tolist()
    # a clip far into the video: the seek lands on an earlier keyframe and must still count by pts
    for start in (13, 50, 99, 134):
        clip = read_frames(index_video, np.arange(start, start + 16))
        assert [read_index(f) for f in clip] == list(range(start, start + 16))


def test_resize_in_decoder(index_video):
    frames = read_frames(VideoRecord(index_video, 1), np.arange(30, 46), size_hw=(32, 80))
    assert frames.shape == (16, 32, 80, 3)
    assert [read_index(f) for f in frames] == list(range(30, 46))


def test_iter_frames_streams_everything(index_video):
    chunks = list(iter_frames(index_video, size_hw=(32, 80), chunk=64))
    assert [len(c) for c in chunks] == [64, 64, N - 128]
    assert [read_index(f) for c in chunks for f in c] == list(range(N))


def test_index_out_of_range(index_video):
    with pytest.raises(DataError, match=r"outside the video's 150 frames"):
        read_frames(index_video, np.array([0, N]))


def test_bframes_avi(tmp_path):
    """MPEG-4 with B-frames in AVI tagged XVID (as UCF-101 ships): decode order differs from display order."""
    import av

    path = tmp_path / "bf.avi"
    frames = index_frames(90)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25, options={"bf": "2", "g": "12", "qscale": "4"})
        s.codec_context.codec_tag = "XVID"
        s.width, s.height, s.pix_fmt = 160, 64, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert count_frames(path) == 90
    for gap in (0, 10_000):
        decode.SEEK_MIN_GAP, saved = gap, decode.SEEK_MIN_GAP
        try:
            idx = np.array([70, 71, 3, 40, 89, 55])
            assert [read_index(f) for f in read_frames(path, idx)] == idx.tolist()
        finally:
            decode.SEEK_MIN_GAP = saved


@pytest.mark.parametrize("ext, codec", [(".h264", "libx264"), (".m4v", "mpeg4"), (".mpg", "mpeg2video")])
def test_raw_and_mpeg_ps_streams(tmp_path, ext, codec, monkeypatch):
    """Raw H.264 has no timestamps at all: frames are then counted in decode order, without seeking."""
    import av

    path = tmp_path / f"raw{ext}"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25, options={"g": "12", "bf": "2"})
        s.width, s.height, s.pix_fmt = 160, 64, "yuv420p"
        for f in index_frames(60):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert count_frames(path) == 60
    monkeypatch.setattr(decode, "SEEK_MIN_GAP", 0)
    idx = np.array([59, 2, 30, 31, 45])
    assert [read_index(f) for f in read_frames(path, idx)] == idx.tolist()
    assert [read_index(f) for c in iter_frames(path, chunk=25) for f in c] == list(range(60))


def test_real_h264_videos():
    videos = real_videos()
    for name, (n, h, w) in REAL_VIDEOS.items():
        path = videos[name]
        info = video_info(path)
        assert (info.num_frames, info.height, info.width) == (n, h, w), name
        if name == "carphone_pristine.mp4":
            full = np.concatenate(list(iter_frames(path, chunk=50)))
            assert full.shape == (n, h, w, 3)
            picked = read_frames(path, np.array([100, 7, 64]))
            np.testing.assert_array_equal(picked, full[[100, 7, 64]])
    clip = read_frames(videos["bikes.mp4"], np.arange(200, 216), size_hw=(128, 301))
    assert clip.shape == (16, 128, 301, 3)


def _frame_folder(folder: Path, n: int, start: int = 1, template: str = "img_{:05d}.jpg") -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(index_frames(n)):
        Image.fromarray(f).save(folder / template.format(i + start), quality=95)
    return folder


def test_frame_folder(tmp_path):
    folder = _frame_folder(tmp_path / "v", 20)
    assert count_frames(folder) == 20
    info = video_info(folder)
    assert (info.num_frames, info.height, info.width, info.fps) == (20, 64, 160, 0.0)
    idx = np.array([19, 0, 7, 7])
    assert [read_index(f) for f in read_frames(VideoRecord(folder, 0, 20), idx)] == idx.tolist()
    small = read_frames(folder, idx, size_hw=(32, 80))
    assert small.shape == (4, 32, 80, 3) and [read_index(f) for f in small] == idx.tolist()
    chunks = list(iter_frames(folder, chunk=8))
    assert [len(c) for c in chunks] == [8, 8, 4]


def test_frame_folder_template_and_start(tmp_path):
    folder = _frame_folder(tmp_path / "v", 5, start=0, template="frame{:d}.png")
    frames = read_frames(folder, np.array([4, 1]), template="frame{:d}.png", start_index=0)
    assert [read_index(f) for f in frames] == [4, 1]
    with pytest.raises(DataError, match="no frames named like 'img_00001.jpg'"):
        video_info(folder)  # the default template finds nothing here


def test_frame_folder_errors(tmp_path):
    folder = _frame_folder(tmp_path / "v", 6)
    (folder / "img_00003.jpg").unlink()
    with pytest.raises(DataError, match=r"img_00003\.jpg: missing frame file"):
        count_frames(folder)
    with pytest.raises(DataError, match=r"img_00003\.jpg: missing frame file"):
        read_frames(VideoRecord(folder, 0, 6), np.arange(4))
    (folder / "img_00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"img_00002\.jpg: cannot decode"):
        read_frames(VideoRecord(folder, 0, 6), np.array([1]))


def test_opencv_and_pil_decode_frame_folders_alike(tmp_path):
    """OpenCV (the seed's decoder) and the PIL fallback give the same pixels for what `c3d prepare` writes."""
    from c3dnet.data import folders

    folder = tmp_path / "v"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):  # noisy blocks, 4:2:0 at quality 90 (what `c3d prepare` writes), and one grayscale frame
        frame = np.repeat(np.repeat(rng.integers(0, 256, (16, 22, 3), dtype=np.uint8), 8, 0), 8, 1)[:128, :171]
        image = Image.fromarray(np.ascontiguousarray(frame))
        (image.convert("L") if i == 3 else image).save(folder / f"img_{i + 1:05d}.jpg", quality=90)
    for i in range(6):
        file = folder / f"img_{i + 1:05d}.jpg"
        np.testing.assert_array_equal(folders.read_jpeg_opencv(file), folders.read_image_pil(file, i, folder))
    (folder / "img_00002.jpg").write_bytes((folder / "img_00002.jpg").read_bytes()[:-300])  # truncated
    with pytest.raises(DataError, match=r"img_00002\.jpg: cannot decode"):
        read_frames(folder, np.array([1]))  # OpenCV would only warn: PIL takes it, and refuses it


def test_video_errors(tmp_path):
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.avi: video file is empty"):
        count_frames(empty)
    with pytest.raises(DataError, match=r"missing\.avi: video file not found"):
        read_frames(tmp_path / "missing.avi", np.array([0]))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(DataError, match=r"junk\.mp4"):
        video_info(junk)
    audio = tmp_path / "audio.wav"
    _write_wav(audio)
    with pytest.raises(DataError, match=r"audio\.wav: has no video stream"):
        count_frames(audio)


def _write_wav(path: Path) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)


@pytest.mark.parametrize("codec, ext", [("mpeg4", ".avi"), ("libx264", ".mp4")])
def test_truncated_video_is_an_error(tmp_path, codec, ext):
    """Cut anywhere in the frame data (mid-packet or on a packet boundary), a video is reported, not shortened."""
    data = write_index_video(tmp_path / f"full{ext}", 60, codec=codec).read_bytes()
    for k, frac in enumerate(np.linspace(0.1, 0.9, 9)):
        cut = tmp_path / f"cut{k}{ext}"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(DataError, match=rf"cut{k}\{ext}: (.*truncated|.*corrupt|not a readable|has no video)"):
            count_frames(cut)


def test_truncated_video_never_lies(tmp_path):
    """A truncated file yields either the right frames or DataError, never frames with the wrong index."""
    full = write_index_video(tmp_path / "full.avi", 60)
    data = full.read_bytes()
    for frac in (0.3, 0.6, 0.9):
        cut = tmp_path / f"cut{frac}.avi"
        cut.write_bytes(data[: int(len(data) * frac)])
        try:
            n = count_frames(cut)
            frames = read_frames(cut, np.arange(n))
        except DataError:
            continue
        assert [read_index(f) for f in frames] == list(range(n))


def _resize_in_child() -> tuple[int, ...]:
    from c3dnet.data.resize import resize_image

    big = np.zeros((1080, 1920, 3), np.uint8)
    return tuple(resize_image(big, (128, 227)).shape)


def test_forked_workers_survive_opencv_threads_in_the_parent():
    """Other code ran OpenCV's thread pool in the parent; the resize of a child c3dnet forks must not hang (the
    pool is stopped before each fork c3dnet makes, `c3dnet.forks`). Without that, the child hangs in about half the
    runs."""
    import cv2

    cv2.setNumThreads(4)
    for _ in range(3):
        cv2.GaussianBlur(np.zeros((1080, 1920, 3), np.uint8), (5, 5), 1)  # runs on the pool's threads
    from c3dnet.forks import FORK

    with FORK.Pool(1) as pool:
        for _ in range(3):
            assert pool.apply_async(_resize_in_child).get(timeout=30) == (128, 227, 3)
    assert cv2.getNumThreads() == 1


def test_other_rotations_are_left_unturned_with_a_warning(caplog):
    """FFmpeg's `rotate` filter (arbitrary angles, filled corners) is not reproduced: the frames stay as coded."""
    import math

    from c3dnet.data.orientation import orientation_of

    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    matrix = (round(c * 65536), round(-s * 65536), 0, round(s * 65536), round(c * 65536), 0, 0, 0, 1 << 30)
    with caplog.at_level("WARNING"):
        o = orientation_of(matrix)
    assert o.ops == () and o.rotation == 330 and o.describe() == "none"
    assert "330 degree rotation" in caplog.text
