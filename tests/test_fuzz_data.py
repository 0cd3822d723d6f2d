"""Fuzzing the decoder and the annotation parsers: bad input gives `DataError` (or correct data), nothing else.

Every case runs under an alarm, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import signal
import string
from pathlib import Path

import numpy as np
import pytest

from c3dnet.data import decode
from c3dnet.data.decode import count_frames, read_frames
from c3dnet.data.sources import load_source, load_video_list
from c3dnet.errors import DataError
from tests.media import read_index, write_index_video

N = 40


@pytest.fixture(autouse=True)
def _no_hang():
    def boom(signum, frame):
        raise TimeoutError("fuzz case hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _decode_all(path: Path) -> np.ndarray | None:
    """Count and read every frame (first, random, seek-distance) or return None on DataError."""
    try:
        n = count_frames(path)
        idx = np.array(sorted({0, n - 1, n // 2, min(n - 1, decode.SEEK_MIN_GAP + 1)}))
        frames = read_frames(path, idx, size_hw=(32, 80))
        assert frames.shape == (len(idx), 32, 80, 3)
        return frames
    except DataError:
        return None


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("fz")
    return {ext: write_index_video(root / f"v{ext}", N, codec=codec).read_bytes()
            for ext, codec in ((".avi", "mpeg4"), (".mp4", "libx264"))}


@pytest.mark.parametrize("ext", [".avi", ".mp4", ".mkv", ".webm"])
def test_random_bytes(tmp_path, ext):
    rng = np.random.default_rng(0)
    headers = [b"", b"RIFF\x00\x10\x00\x00AVI LIST", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", b"\x1aE\xdf\xa3"]
    for k in range(24):
        body = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        path = tmp_path / f"r{k}{ext}"
        path.write_bytes(headers[k % len(headers)] + body)
        _decode_all(path)  # must not raise anything but DataError


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_truncated_videos(tmp_path, valid, ext):
    data = valid[ext]
    for k, cut in enumerate(np.linspace(0, len(data) - 1, 25).astype(int).tolist()):
        path = tmp_path / f"t{k}{ext}"
        path.write_bytes(data[:cut])
        frames = _decode_all(path)
        if frames is not None:  # whatever decodes must be the right frames
            n = count_frames(path)
            idx = sorted({0, n - 1, n // 2, min(n - 1, decode.SEEK_MIN_GAP + 1)})
            assert [read_index(f) for f in frames] == idx


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_corrupted_bytes(tmp_path, valid, ext):
    rng = np.random.default_rng(1)
    for k in range(20):
        data = bytearray(valid[ext])
        for pos in rng.integers(0, len(data), int(rng.integers(1, 40))).tolist():
            data[pos] = int(rng.integers(256))
        path = tmp_path / f"c{k}{ext}"
        path.write_bytes(bytes(data))
        _decode_all(path)


def test_corrupt_frame_folders(tmp_path):
    rng = np.random.default_rng(2)
    for k in range(10):
        folder = tmp_path / f"f{k}"
        folder.mkdir()
        for i in range(int(rng.integers(1, 4))):
            (folder / f"img_{i + 1:05d}.jpg").write_bytes(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
        with pytest.raises(DataError):
            read_frames(folder, np.array([0]))


TOKENS = ["0", "1", "2", "-1", "3", "99", "x", "1.5", "Jump", "Run", "Jump/a.avi", "Run/b.avi", "a.avi",
          "frames/Jump/a", "../../etc", "", "\t", "é", "Jump/", "/", "1 2", "NaN"]


def _random_line(rng: np.random.Generator) -> str:
    if rng.random() < 0.15:
        return "".join(rng.choice(list(string.printable), int(rng.integers(0, 30))).tolist())
    return " ".join(rng.choice(TOKENS, int(rng.integers(0, 5))).tolist())


def _layout(root: Path) -> None:
    for rel in ("Jump/a.avi", "Run/b.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "frames/Jump/a").mkdir(parents=True)


def _check(load) -> None:
    try:
        src = load()
    except DataError:
        return
    for r in src.records:  # whatever parses carries the label of its class folder: never a wrong label
        assert 0 <= r.label < len(src.class_names)
        if src.format in ("ucf101", "hmdb51"):
            assert r.path.parent.name.lower() == src.class_names[r.label].lower()


@pytest.mark.parametrize("seed", range(3))
def test_random_annotation_lines(tmp_path, seed):
    rng = np.random.default_rng(seed)
    _layout(tmp_path)
    ucf = tmp_path / "ucfTrainTestlist"
    ucf.mkdir()
    hmdb = tmp_path / "hmdb" / "testTrainMulti_7030_splits"
    hmdb.mkdir(parents=True)
    for case in range(40):
        lines = "\n".join(_random_line(rng) for _ in range(int(rng.integers(1, 6))))
        skip = bool(case % 2)
        (tmp_path / "list.txt").write_text(lines)
        _check(lambda: load_source(tmp_path / "list.txt", skip_bad=skip))  # noqa: B023
        (ucf / "classInd.txt").write_text("1 Jump\n2 Run\n" if case % 3 else lines)
        (ucf / "trainlist01.txt").write_text(lines)
        (ucf / "testlist01.txt").write_text(lines)
        for subset in ("train", "test"):
            _check(lambda: load_source(tmp_path, subset, skip_bad=skip))  # noqa: B023
        (hmdb / "Jump_test_split1.txt").write_text(lines)
        _check(lambda: load_source(tmp_path / "hmdb", "test", splits_dir=hmdb, skip_bad=skip))  # noqa: B023
        (tmp_path / "classes.txt").write_text(lines if case % 4 == 0 else "Jump\nRun\n")
        (tmp_path / "train_split1.txt").write_text(lines)
        _check(lambda: load_source(tmp_path, "train", skip_bad=skip))  # noqa: B023
        (tmp_path / "classes.txt").unlink()
        if "/ " in f"{lines} " or ".." in lines or "\n/" in f"\n{lines}":
            continue  # a list naming "/" or "../.." asks to walk the whole disk: valid, but not for a unit test
        try:
            load_video_list([tmp_path / "list.txt"])
        except DataError:
            pass


def test_binary_annotation_files(tmp_path):
    rng = np.random.default_rng(3)
    for k in range(10):
        path = tmp_path / f"b{k}.txt"
        path.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        _check(lambda: load_source(path))  # noqa: B023
