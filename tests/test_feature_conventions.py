"""Feature conventions (issue 13): --fps by presentation time, --segments (uniform and Sultani's rule), --l2 modes,
the rows' times sidecar, and `c3d pack`. The oracles are FFmpeg's own frame timestamps (ffprobe) and a
recomputation of the segments written here from the formulas, independently of c3dnet.inference.pooling."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data.decode import video_times
from c3dnet.data.timing import FrameTimes, resample
from c3dnet.features.manifest import read_times
from c3dnet.inference.pooling import segment_groups
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.media import real_videos
from tests.oracle import CORPUS_BY_NAME, corpus_path, ffprobe

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
RATES = [Fraction(10), Fraction(25), Fraction(30000, 1001), Fraction(60)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_model(C3D(tiny_config(), preprocess=PRE, class_names=list("abcde")).eval(), path)
    return path


def _videos() -> dict[str, Path]:
    """Real encoders' files of several frame rates: VFR H.264 (MKV, MP4), UCF-101's packed XviD AVI, a real video."""
    files = {name: corpus_path(CORPUS_BY_NAME[name]) for name in ("vfr_h264_mkv", "vfr_h264_mp4", "xvid_packed_ucf")}
    files["carphone"] = real_videos()["carphone_pristine.mp4"]
    return files


def _ffprobe_times(path: Path) -> tuple[list[Fraction], Fraction]:
    """Each frame's time from FFmpeg (best_effort_timestamp x time base, from the first frame), and the end of the
    last frame (its time plus its packet duration, or the mean frame interval where the CLI gives none)."""
    info = ffprobe(path, "-show_frames", "-show_streams")
    tb = Fraction(info["streams"][0]["time_base"])
    frames = info["frames"]
    ts = [f.get("best_effort_timestamp") for f in frames]
    for i in range(1, len(ts)):  # frames flushed at the end carry none: the CLI times them by the frame before
        if ts[i] is None:
            ts[i] = ts[i - 1] + int(frames[i - 1].get("pkt_duration") or frames[i - 1].get("duration") or 1)
    times = [(t - ts[0]) * tb for t in ts]
    last = int(frames[-1].get("pkt_duration") or frames[-1].get("duration") or 0)
    if last <= 0:
        last = (ts[-1] - ts[0]) / (len(ts) - 1)
    return times, times[-1] + last * tb


def _expected_indices(times: list[Fraction], end: Fraction, fps: Fraction) -> list[int]:
    """The rule, by hand: output frame k (while k/F < end) is the last frame whose time is <= k/F."""
    out, k = [], 0
    while Fraction(k) / fps < end:
        t = Fraction(k) / fps
        out.append(max(i for i, ti in enumerate(times) if ti <= t))
        k += 1
    return out


def test_resample_on_hand_made_times():
    times = FrameTimes(np.array([0, 40, 80, 200, 240]), 280, Fraction(1, 1000))  # a 120 ms gap after frame 2
    assert resample(times, Fraction(10)).tolist() == [0, 2, 3]  # t = 0, 0.1 (frame 2), 0.2 (frame 3 exactly)
    assert resample(FrameTimes.constant(10, Fraction(25)), Fraction(25)).tolist() == list(range(10))
    assert resample(FrameTimes.constant(4, Fraction(25)), Fraction(50)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("name", ["vfr_h264_mkv", "vfr_h264_mp4", "xvid_packed_ucf", "carphone"])
def test_resampling_matches_ffmpeg_timestamps(name):
    path = _videos()[name]
    times, end = _ffprobe_times(path)
    ours = video_times(path)
    assert [Fraction(int(t)) * ours.time_base for t in ours.ts] == times
    assert Fraction(ours.end) * ours.time_base == end
    for fps in RATES:
        assert resample(ours, fps).tolist() == _expected_indices(times, end, fps), (name, fps)


def _extract(weights, out, videos, *args):
    assert main(["extract", "--weights", str(weights), "--out", str(out), "--no-progress", *map(str, args),
                 *map(str, videos)]) == 0


def _recompute(rows: np.ndarray, s: int, rule: str) -> np.ndarray:
    """Segments from per-clip rows by the issue's formulas, written out independently (floats as MATLAB computes)."""
    n = len(rows)
    segs = []
    if rule == "uniform":
        b = [math.floor(k * n / s + 0.5) for k in range(s + 1)]
        for k in range(s):
            segs.append(rows[b[k]:b[k + 1]].mean(axis=0) if b[k + 1] > b[k] else rows[min(b[k], n - 1)])
    else:  # Sultani et al.'s MATLAB: round(linspace(1, N, 33)), halves away from zero, 1-based
        lin = 1 + np.arange(s + 1) * (n - 1) / s
        b = [int(np.floor(x + 0.5)) for x in lin]
        for k in range(s):
            ss, ee = b[k], b[k + 1] - 1
            segs.append(rows[ss - 1:ee].mean(axis=0) if ee >= ss else rows[ss - 1])
    out = np.stack(segs)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_segments_equal_a_recomputation_from_clip_rows(tmp_path, weights):
    """Per-clip rows at --fps 30, then --segments 32 (both rules), on real files of 25 fps, VFR and 30 fps: the
    segment rows equal the formulas applied to the clip rows, and rows are unit length (--l2 output by default)."""
    videos = list(_videos().values())
    _extract(weights, tmp_path / "clips", videos, "--fps", "30", "--stride", "8")
    for rule in ("uniform", "sultani"):
        _extract(weights, tmp_path / rule, videos, "--fps", "30", "--stride", "8", "--segments", "32",
                 "--segment-rule", rule)
        for v in videos:
            rows = np.load(tmp_path / "clips" / f"{v.stem}.npy").astype(np.float64)
            got = np.load(tmp_path / rule / f"{v.stem}.npy")
            assert got.shape == (32, rows.shape[1])
            np.testing.assert_allclose(got, _recompute(rows, 32, rule), rtol=1e-5, atol=1e-6)
    entry = json.loads((tmp_path / "sultani" / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["segments"] == 32 and entry["segment_rule"] == "sultani" and entry["sample_fps"] == "30"
    assert entry["l2"] == "output"


def test_sultani_rule_by_hand():
    # N = 10, S = 4: linspace(1, 10, 5) = 1, 3.25, 5.5, 7.75, 10 -> 1, 3, 6, 8, 10 (5.5 rounds away from zero)
    assert [g.tolist() for g in segment_groups(10, 4, "sultani")] == [[0, 1], [2, 3, 4], [5, 6], [7, 8]]
    # N = 3, S = 4: linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3 -> 1, 2, 2, 3, 3: segment 2 is empty and takes clip 2
    assert [g.tolist() for g in segment_groups(3, 4, "sultani")] == [[0], [1], [1], [2]]
    assert [g.tolist() for g in segment_groups(1, 3, "sultani")] == [[0], [0], [0]]
    assert [g.tolist() for g in segment_groups(3, 4)] == [[0], [1], [2], [2]]  # b = 0, 1, 2, 2, 3: empty -> clip 2
    assert sum(len(g) for g in segment_groups(1000, 32)) == 1000  # uniform uses every clip once


def test_l2_modes(tmp_path, weights):
    video = _videos()["xvid_packed_ucf"]
    _extract(weights, tmp_path / "raw", [video], "--stride", "8")
    raw = np.load(tmp_path / "raw" / f"{video.stem}.npy").astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    _extract(weights, tmp_path / "clip", [video], "--stride", "8", "--video-mean", "--l2", "clip")
    np.testing.assert_allclose(np.load(tmp_path / "clip" / f"{video.stem}.npy"), unit.mean(axis=0), rtol=1e-5)
    _extract(weights, tmp_path / "out", [video], "--video-mean", "--l2", "--stride", "8")  # --l2 alone: output
    mean = raw.mean(axis=0)
    np.testing.assert_allclose(np.load(tmp_path / "out" / f"{video.stem}.npy"), mean / np.linalg.norm(mean),
                               rtol=1e-5)
    _extract(weights, tmp_path / "none", [video], "--stride", "8", "--segments", "4", "--l2", "none")
    got = np.load(tmp_path / "none" / f"{video.stem}.npy")
    np.testing.assert_allclose(got, np.stack([raw[g].mean(axis=0) for g in segment_groups(len(raw), 4)]), rtol=1e-5)


def test_times_sidecar_on_a_variable_frame_rate_file(tmp_path, weights):
    video = _videos()["vfr_h264_mkv"]
    times, end = _ffprobe_times(video)
    _extract(weights, tmp_path / "own", [video], "--stride", "8")
    rows = read_times(tmp_path / "own" / f"{video.stem}.times.csv")
    n = len(times)
    starts = list(range(0, n - PRE.clip_len + 1, 8))
    assert rows[:, 0].tolist() == starts and rows[:, 1].tolist() == [s + PRE.clip_len - 1 for s in starts]
    want_start = [float(times[s]) for s in starts]
    want_end = [float(times[s + PRE.clip_len]) if s + PRE.clip_len < n else float(end) for s in starts]
    np.testing.assert_allclose(rows[:, 2], want_start, atol=1e-6)
    np.testing.assert_allclose(rows[:, 3], want_end, atol=1e-6)
    # At --fps 10: clip k covers sampled frames 8k .. 8k+7, shown from 8k/10 s to (8k+8)/10 s.
    _extract(weights, tmp_path / "fps", [video], "--stride", "8", "--fps", "10")
    rows = read_times(tmp_path / "fps" / f"{video.stem}.times.csv")
    idx = _expected_indices(times, end, Fraction(10))
    k = np.arange(len(rows))
    np.testing.assert_allclose(rows[:, 2], 0.8 * k, atol=1e-6)
    np.testing.assert_allclose(rows[:, 3], 0.8 * k + 0.8, atol=1e-6)
    assert rows[:, 0].tolist() == [idx[8 * i] for i in k] and rows[:, 1].tolist() == [idx[8 * i + 7] for i in k]
    _extract(weights, tmp_path / "seg", [video], "--fps", "10", "--stride", "8", "--segments", "2")
    seg = read_times(tmp_path / "seg" / f"{video.stem}.times.csv")
    groups = segment_groups(len(rows), 2)
    assert seg[:, 0].tolist() == [rows[g, 0].min() for g in groups]
    assert seg[:, 3].tolist() == pytest.approx([rows[g, 3].max() for g in groups])


def test_predict_and_timeline_at_fps(tmp_path, weights):
    """predict --fps takes its 10 test clips among the sampled frames; the timeline's times follow them."""
    from c3dnet.data import sampling
    from c3dnet.inference.prediction import predict_timeline, predict_video
    from c3dnet.inference.runner import ClipRunner
    from c3dnet.weights import load_model

    video = _videos()["vfr_h264_mp4"]
    runner = ClipRunner(load_model(weights), "logits")
    frame_map = resample(video_times(video), Fraction(12))
    p = predict_video(runner, video, list("abcde"), 10, fps=Fraction(12))
    assert p.clip_starts == frame_map[sampling.test_clips(len(frame_map), PRE.clip_len, 10)[:, 0]].tolist()
    assert p.clip_starts != predict_video(runner, video, list("abcde"), 10).clip_starts
    t = predict_timeline(runner, video, list("abcde"), stride=8, fps=Fraction(12)).to_dict()
    assert [c["time_s"] for c in t["clips"]] == pytest.approx([8 * k / 12 for k in range(len(t["clips"]))])
    assert t["sample_fps"] == "12"


def _frame_folder(tmp_path: Path, n: int) -> Path:
    from PIL import Image

    folder = tmp_path / "frames" / "v1"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((48, 64, 3), i * 7 % 256, np.uint8)).save(folder / f"img_{i + 1:05d}.jpg")
    return folder


def test_frame_folders_need_their_rate(tmp_path, weights, capsys):
    folder = _frame_folder(tmp_path, 20)
    rc = main(["extract", "--weights", str(weights), "--out", str(tmp_path / "o"), "--no-progress", "--fps", "10",
               str(folder)])
    assert rc == 2 and "--source-fps" in capsys.readouterr().err
    _extract(weights, tmp_path / "o2", [folder], "--fps", "10", "--source-fps", "20")
    rows = read_times(tmp_path / "o2" / "v1.times.csv")
    assert rows[0].tolist() == [0, 14, 0.0, 0.8]  # 8 sampled frames of 0.1 s: source frames 0, 2, ..., 14


@pytest.mark.parametrize("name", ["vfr_h264_mkv", "xvid_packed_ucf"])
def test_prepare_records_frame_times(tmp_path, name):
    """`c3d prepare` records the times while it decodes (no second pass); they are FFmpeg's, as the index's."""
    from c3dnet.data.prepare import extract_video
    from c3dnet.data.timing import TIMING_FILE, folder_times

    video = _videos()[name]
    n = extract_video(video, tmp_path / "v", short_side=0)
    assert (tmp_path / "v" / TIMING_FILE).is_file()
    got, want = folder_times(tmp_path / "v", n, None), video_times(video)
    assert got.ts.tolist() == want.ts.tolist() and got.end == want.end and got.time_base == want.time_base
    times, end = _ffprobe_times(video)
    assert [Fraction(int(t)) * got.time_base for t in got.ts] == times and got.end * got.time_base == end


@pytest.mark.parametrize("args, message", [
    (["--segments", "0"], "--segments must be a number of segments >= 1"),
    (["--segments", "-2"], "--segments must be a number of segments >= 1"),
    (["--fps", "0"], "--fps must be a frame rate above 0"),
    (["--fps", "-5"], "--fps must be a frame rate above 0"),
    (["--fps", "abc"], "--fps must be a frame rate above 0"),
    (["--source-fps", "0"], "--source-fps must be a frame rate above 0"),
    (["--segments", "4", "--video-mean"], "choose one"),
])
def test_bad_options_say_what_is_allowed(tmp_path, weights, capsys, args, message):
    rc = main(["extract", "--weights", str(weights), "--out", str(tmp_path / "o"), *args, str(tmp_path)])
    assert rc == 2 and message in capsys.readouterr().err


def test_short_video_wraps_around(tmp_path, weights):
    """A video shorter than one clip at the sampled rate gives one clip that wraps, as sliding clips do."""
    video = _videos()["xvid_packed_ucf"]
    from c3dnet.api import extract_features

    rows = extract_features(str(weights), video, stride=8, fps="1", segments=3)  # 165 frames at 25 fps: 7 sampled
    assert rows.shape == (3, 32)
    np.testing.assert_allclose(rows[0], rows[2], rtol=1e-6)  # all three segments are the only clip


# --------------------------------------------------------------------------------------------------- pack


def test_pack_h5_txt_pt(tmp_path, weights):
    import h5py  # the dev extra installs it (c3dnet[h5])
    videos = [_videos()["xvid_packed_ucf"], _videos()["vfr_h264_mkv"]]
    _extract(weights, tmp_path / "f", videos, "--segments", "4", "--stride", "8")
    feats = {v.stem: np.load(tmp_path / "f" / f"{v.stem}.npy") for v in videos}
    times = {v.stem: read_times(tmp_path / "f" / f"{v.stem}.times.csv") for v in videos}
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "p.h5"), "--dataset-name", "c3d_features"]) == 0
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f.attrs["segments"] == 4 and f.attrs["layer"] == "fc6"
        for key, want in feats.items():
            ds = f[key]["c3d_features"]
            np.testing.assert_array_equal(ds[()], want)
            np.testing.assert_array_equal(ds.attrs["frames"], times[key][:, :2])
            np.testing.assert_allclose(ds.attrs["times"], times[key][:, 2:])
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "txt")]) == 0
    for key, want in feats.items():
        text = (tmp_path / "txt" / f"{key}_C.txt").read_text()
        lines = text.splitlines()
        assert len(lines) == 4 and lines[0].endswith(" ") and lines[0].split()[0] == f"{want[0, 0]:f}"
        np.testing.assert_allclose(np.loadtxt(tmp_path / "txt" / f"{key}_C.txt"), want, atol=1e-6)
    index = json.loads((tmp_path / "txt" / "index.json").read_text())
    assert index["settings"]["segments"] == 4 and set(index["videos"]) == set(feats)
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "pt"), "--format", "pt"]) == 0
    for key, want in feats.items():
        got = torch.load(tmp_path / "pt" / f"{key}.pt", weights_only=True)
        np.testing.assert_array_equal(got.numpy(), want)
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "txt")]) == 0  # rerun: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".txt")) == []


def test_pack_refuses_two_settings(tmp_path, weights, capsys):
    a, b = _videos()["xvid_packed_ucf"], _videos()["vfr_h264_mkv"]
    _extract(weights, tmp_path / "f", [a], "--stride", "8")
    _extract(weights, tmp_path / "f", [b], "--stride", "16")
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "p.h5")]) == 2
    err = capsys.readouterr().err
    assert "two different settings" in err and "stride: 16 for" in err and ", 8 for" in err
    assert a.stem in err and b.stem in err
    assert not (tmp_path / "p.h5").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"


def test_clip_dataset_chooses_clips_among_sampled_frames():
    """`c3d test --fps` and training with data.fps: the test clips are the protocol's clips of the sampled frames."""
    from c3dnet.data import sampling
    from c3dnet.data.dataset import ClipDataset
    from c3dnet.data.sources import VideoRecord

    video = _videos()["vfr_h264_mkv"]
    frame_map = resample(video_times(video), Fraction(10))
    sample = ClipDataset([VideoRecord(video, 0)], "test", PRE, num_clips=3, fps=Fraction(10)).sample(0)
    assert sample.indices.tolist() == frame_map[sampling.test_clips(len(frame_map), PRE.clip_len, 3)].tolist()
    train = ClipDataset([VideoRecord(video, 0)], "train", PRE, fps=Fraction(10)).sample(0)
    assert set(train.indices.ravel().tolist()) <= set(frame_map.tolist())


def test_pack_refuses_a_missing_times_file_before_writing(tmp_path, weights, capsys):
    a, b = _videos()["xvid_packed_ucf"], _videos()["vfr_h264_mkv"]
    _extract(weights, tmp_path / "f", [a, b], "--stride", "8")
    (tmp_path / "f" / f"{b.stem}.times.csv").unlink()
    assert main(["pack", str(tmp_path / "f"), "--to", str(tmp_path / "p.h5")]) == 2
    assert f"{b.stem}.times.csv: missing; re-run `c3d extract`" in capsys.readouterr().err
    assert not (tmp_path / "p.h5").exists() and not list(tmp_path.glob(".p.h5*"))
