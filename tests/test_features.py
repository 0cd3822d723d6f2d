"""Extraction core: rows equal forward_features on the same clips, sliding clip starts, resume after a crash."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.data import sampling
from c3dnet.data.decode import read_frames
from c3dnet.data.encode import write_video
from c3dnet.data.sources import VideoRecord
from c3dnet.data.transforms import eval_transform, normalize
from c3dnet.errors import DataError
from c3dnet.features import (
    ClipRunner,
    ExtractOptions,
    HeartbeatLock,
    extract,
    read_manifest,
    stream_clips,
    write_merged_manifest,
)
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from tests.conftest import tiny_config

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)


def _video(path, n, seed=0, hw=(48, 64)):
    """n frames of smooth random texture that changes every frame (so every frame index is distinguishable)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # (n, H, W, 3) blocks survive compression
    write_video(path, frames, fps=25.0)
    return path


def _model(num_classes=5):
    return C3D(tiny_config(num_classes=num_classes), preprocess=PRE).eval()


def _reference_rows(model, path, starts, layer="fc6"):
    from c3dnet.data.decode import video_info

    info = video_info(path)
    idx = sampling.clip_indices(np.asarray(starts), info.num_frames, PRE.clip_len, PRE.frame_interval)  # (K, T)
    size = PRE.resize_target(info.height, info.width)
    clips = [eval_transform(read_frames(VideoRecord(path, -1), row, size_hw=size), PRE) for row in idx]
    with torch.inference_mode():
        return model.forward_features(normalize(torch.stack(clips), PRE), layer).numpy()


@pytest.mark.parametrize("num_frames", [1, 5, 7, 8, 9, 16, 23, 40])
@pytest.mark.parametrize("stride", [3, 8, 16])
def test_stream_clips_match_read_frames(tmp_path, num_frames, stride):
    path = _video(tmp_path / "v.avi", num_frames, seed=num_frames)
    got = list(stream_clips(path, PRE, stride, num_frames, (36, 48), chunk=5))
    last = num_frames - PRE.clip_len
    expected_starts = list(range(0, last + 1, stride)) if last >= 0 else [0]
    assert [k for k, _ in got] == list(range(len(expected_starts)))
    idx = sampling.clip_indices(np.array(expected_starts), num_frames, PRE.clip_len)
    for (_, clip), row in zip(got, idx):
        expected = eval_transform(read_frames(VideoRecord(path, -1), row, size_hw=(36, 48)), PRE)
        assert clip.dtype == torch.uint8 and clip.shape == (3, 8, 32, 32)
        assert torch.equal(clip, expected)


def test_extracted_rows_equal_forward_features(tmp_path):
    paths = [_video(tmp_path / f"v{i}.avi", n, seed=i) for i, n in enumerate([5, 20, 37])]
    model = _model()
    summary = extract([VideoRecord(p, -1) for p in paths], ClipRunner(model, "fc6"), tmp_path / "out",
                      ExtractOptions(FeatureRecipe(stride=4), batch_size=3, workers=2, weights="w.safetensors"),
                      progress=False)
    assert summary.done == 3 and summary.skipped == 0 and summary.frames == 5 + 20 + 37
    entries = {e.key: e for e in read_manifest(tmp_path / "out")}
    assert sorted(entries) == ["v0", "v1", "v2"]
    for p in paths:
        e = entries[p.stem]
        rows = np.load(tmp_path / "out" / e.output)
        assert e.clip_starts == sampling.sliding_start_frames(e.num_frames, 8, 4).tolist()
        assert rows.shape == (len(e.clip_starts), 32) and rows.dtype == np.float32
        np.testing.assert_allclose(rows, _reference_rows(model, p, e.clip_starts), rtol=1e-4, atol=1e-5)
        assert e.video == str(p.resolve()) and e.layer == "fc6" and e.fps == pytest.approx(25.0)
        assert e.weights == "w.safetensors"
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["v0", "v1", "v2"]
    # Nothing left behind: no temporary files, no locks.
    assert not list((tmp_path / "out").glob(".*.tmp")) and not list((tmp_path / "out" / ".locks").glob("*"))


def test_video_mean_and_l2_follow_the_paper(tmp_path):
    path = _video(tmp_path / "v.avi", 30)
    model = _model()
    runner = ClipRunner(model, "fc7")
    extract([VideoRecord(path, -1)], runner, tmp_path / "rows", ExtractOptions(FeatureRecipe("fc7", stride=8, l2=True)),
            progress=False)
    extract([VideoRecord(path, -1)], runner, tmp_path / "mean", ExtractOptions(FeatureRecipe("fc7", stride=8, l2=True,
                                                                                video_mean=True)),
            progress=False)
    starts = sampling.sliding_start_frames(30, 8, 8)
    ref = _reference_rows(model, path, starts, "fc7")
    rows = np.load(tmp_path / "rows" / "v.npy")
    np.testing.assert_allclose(rows, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    mean = np.load(tmp_path / "mean" / "v.npy")
    expected = ref.mean(0) / np.linalg.norm(ref.mean(0))  # mean first, then L2 (not the mean of L2 rows)
    assert mean.shape == (32,)
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-6)


class _CrashAfter:
    """A runner that dies after `n` batches, as a killed job would."""

    def __init__(self, runner, n):
        self.runner, self.n = runner, n

    def __getattr__(self, name):  # preprocess, output, dim, device, ...: the wrapped runner's
        return getattr(self.runner, name)

    def submit(self, clips):
        if self.n == 0:
            raise RuntimeError("injected crash")
        self.n -= 1
        return self.runner.submit(clips)


def test_crash_then_resume_gives_identical_outputs(tmp_path):
    paths = [_video(tmp_path / f"v{i}.avi", 12 + 7 * i, seed=i) for i in range(5)]
    records = [VideoRecord(p, -1) for p in paths]
    runner = ClipRunner(_model(), "fc6")
    options = ExtractOptions(FeatureRecipe(stride=4), batch_size=2, workers=1)
    extract(records, runner, tmp_path / "clean", options, progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        extract(records, _CrashAfter(runner, 4), tmp_path / "out", options, progress=False)
    done_before = {e.key for e in read_manifest(tmp_path / "out")}
    assert 0 < len(done_before) < 5
    assert not list((tmp_path / "out").glob(".*.tmp")) and not list((tmp_path / "out" / ".locks").glob("*"))
    summary = extract(records, runner, tmp_path / "out", options, progress=False)
    assert summary.skipped == len(done_before) and summary.done == 5 - len(done_before)
    for p in paths:
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{p.stem}.npy"),
                                      np.load(tmp_path / "clean" / f"{p.stem}.npy"))
    assert [e.to_dict() for e in read_manifest(tmp_path / "out")] == \
        [e.to_dict() for e in read_manifest(tmp_path / "clean")]


def test_bad_video_raises_or_is_skipped(tmp_path):
    good = _video(tmp_path / "good.avi", 10)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 1000)
    records = [VideoRecord(bad, -1), VideoRecord(good, -1)]
    runner = ClipRunner(_model(), "fc6")
    with pytest.raises(DataError, match="bad.avi"):
        extract(records, runner, tmp_path / "a", ExtractOptions(workers=1), progress=False)
    summary = extract(records, runner, tmp_path / "b", ExtractOptions(skip_bad=True), progress=False)
    assert summary.done == 1 and [f[0] for f in summary.failed] == [str(bad)]
    failed = (tmp_path / "b" / "failed.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith(str(bad.resolve()) + "\t")
    assert [e.key for e in read_manifest(tmp_path / "b")] == ["good"]


def test_lock_is_exclusive_and_dead_owner_is_reclaimed(tmp_path):
    path = tmp_path / ".locks" / "v.lock"
    a, b = HeartbeatLock(path), HeartbeatLock(path)
    assert a.acquire() and not b.acquire()  # a live owner (this process) keeps it
    a.release()
    assert not path.exists() and b.acquire()
    b.release()
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(f"{int(dead.stdout)} {socket.gethostname()}\n")  # a lock left by a killed process
    assert a.acquire() and path.read_text().split()[0] == str(__import__("os").getpid())
    a.release()
    path.write_text("1 some-other-host\n")  # another machine's lock cannot be checked: respected
    assert not a.acquire()


def test_merged_manifest_ignores_unfinished(tmp_path):
    path = _video(tmp_path / "v.avi", 9)
    extract([VideoRecord(path, -1)], ClipRunner(_model(), "pool5"), tmp_path / "o",
            ExtractOptions(FeatureRecipe("pool5")), progress=False)
    (tmp_path / "o" / "orphan.npy").write_bytes(b"")  # an output without its manifest part is not finished
    assert write_merged_manifest(tmp_path / "o") == 1
    (entry,) = read_manifest(tmp_path / "o")
    assert entry.dim == _model().feature_dims["pool5"] and entry.clip_starts == [0]


def test_streaming_memory_does_not_grow_with_video_length(tmp_path):
    import tracemalloc

    peaks = {}
    for n in (100, 800):
        path = _video(tmp_path / f"v{n}.avi", n, seed=n)
        tracemalloc.start()
        count = sum(1 for _ in stream_clips(path, PRE, 8, n, (36, 48), chunk=16))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == len(sampling.sliding_start_frames(n, 8, 8))
    # 700 more frames: holding them would add 700 * 32 * 32 * 3 bytes (2.1 MB) of numpy buffers (tracemalloc sees
    # those); streaming adds only the decoder's per-frame timestamp index (~200 bytes a frame).
    frame_bytes = 32 * 32 * 3
    assert peaks[800] - peaks[100] < 700 * frame_bytes / 4, peaks


def test_frame_folders_are_extracted_like_videos(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames" / "v_folder"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(19):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"img_{i + 1:05d}.jpg")
    model = _model()
    extract([VideoRecord(folder, -1, 19)], ClipRunner(model, "fc6"), tmp_path / "out",
            ExtractOptions(FeatureRecipe(stride=5)), progress=False)
    (entry,) = read_manifest(tmp_path / "out")
    assert entry.key == "v_folder" and entry.fps == 0.0 and entry.clip_starts == [0, 5, 10]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "v_folder.npy"),
                               _reference_rows(model, folder, entry.clip_starts), rtol=1e-4, atol=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path):
    path = _video(tmp_path / "v.avi", 20)
    runner = ClipRunner(_model(), "fc6")
    extract([VideoRecord(path, -1)], runner, tmp_path / "o", ExtractOptions(FeatureRecipe(stride=8)), progress=False)
    with pytest.raises(DataError, match=r"v.json: .* other settings \(stride 8 there, 4 now\)"):
        extract([VideoRecord(path, -1)], runner, tmp_path / "o", ExtractOptions(FeatureRecipe(stride=4)),
                progress=False)
    with pytest.raises(DataError, match=r"layer 'fc6' there, 'fc7' now"):
        extract([VideoRecord(path, -1)], ClipRunner(_model(), "fc7"), tmp_path / "o",
                ExtractOptions(FeatureRecipe("fc7", stride=8)),
                progress=False)


def test_several_decoder_processes_extract_each_video_once(tmp_path):
    paths = [_video(tmp_path / f"v{i}.avi", 9 + 5 * i, seed=i) for i in range(6)]
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 500)
    records = [VideoRecord(p, -1) for p in paths[:3]] + [VideoRecord(bad, -1)] + [VideoRecord(p, -1) for p in paths[3:]]
    model = _model()
    summary = extract(records, ClipRunner(model, "fc6"), tmp_path / "out",
                      ExtractOptions(FeatureRecipe(stride=4), batch_size=5, workers=2, skip_bad=True),
                      progress=False)
    assert summary.done == 6 and [f[0] for f in summary.failed] == [str(bad)]
    assert summary.clips == sum(len(e.clip_starts) for e in read_manifest(tmp_path / "out"))
    assert not list((tmp_path / "out" / ".locks").glob("*")) and not list((tmp_path / "out").glob(".*.tmp"))
    for p in paths:
        (entry,) = [e for e in read_manifest(tmp_path / "out") if e.key == p.stem]
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{p.stem}.npy"),
                                   _reference_rows(model, p, entry.clip_starts), rtol=1e-4, atol=1e-5)


class _Queued:
    """A runner that returns before computing, as on CUDA: the rows come at `.result()`, from clips that must still
    be what they were at `submit` (extraction may not refill a batch buffer that the model is still reading)."""

    asynchronous = True

    def __init__(self, runner):
        self.runner, self.pending, self.most = runner, 0, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def submit(self, clips):
        snapshot = clips.clone()
        self.pending += 1
        self.most = max(self.most, self.pending)
        queued = self

        class Rows:
            def result(self):
                assert torch.equal(clips, snapshot), "a batch buffer was refilled while its batch was in flight"
                queued.pending -= 1
                return queued.runner(snapshot)

        return Rows()


def test_queued_batches_ring_slots_and_a_video_failing_midway(tmp_path, monkeypatch):
    """Two batches in flight, rings of 3 clip slots (so messages wrap around them), and a video whose decoding
    fails after one clip: every other video's rows are right, and every slot is free at the end."""
    import importlib

    module = importlib.import_module("c3dnet.features.decoders")
    paths = [_video(tmp_path / f"v{i}.avi", 14 + 5 * i, seed=i) for i in range(5)]
    real = module.clip_frames

    def failing(path, *args, **kwargs):
        for n, item in enumerate(real(path, *args, **kwargs)):
            if Path(path).stem == "v2" and n == 1:  # its first clip is out, in a slot not at the ring's end
                raise DataError(f"{path}: injected decoding failure")
            yield item

    free_at_end = []
    close = module.Rings.close

    def checked_close(rings):
        free_at_end.append([s.get_value() for s in rings.free])
        close(rings)

    monkeypatch.setattr(module, "clip_frames", failing)
    monkeypatch.setattr(module, "RING_SLOTS", 3)
    monkeypatch.setattr(module.Rings, "close", checked_close)
    model = _model()
    runner = _Queued(ClipRunner(model, "fc6"))

    def stalled(*_):
        raise TimeoutError("extraction stalled: a decoder process waits for ring slots that are never freed")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(60)
    try:
        summary = extract([VideoRecord(p, -1) for p in paths], runner, tmp_path / "out",
                          ExtractOptions(FeatureRecipe(stride=2), batch_size=4, workers=2, skip_bad=True),
                          progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert runner.most == 2 and runner.pending == 0
    assert free_at_end == [[3, 3]]
    assert summary.done == 4 and [f[0] for f in summary.failed] == [str(paths[2])]
    for p in paths[:2] + paths[3:]:
        (entry,) = [e for e in read_manifest(tmp_path / "out") if e.key == p.stem]
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{p.stem}.npy"),
                                   _reference_rows(model, p, entry.clip_starts), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_extraction_on_the_gpu_matches_the_cpu(tmp_path, monkeypatch):
    # cuDNN convolutions default to TF32 (10-bit mantissas: 3e-3 off after a few layers): full fp32 here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    paths = [_video(tmp_path / f"v{i}.avi", 14 + 9 * i, seed=i) for i in range(4)]
    records = [VideoRecord(p, -1) for p in paths]
    options = ExtractOptions(FeatureRecipe(stride=4), batch_size=4, workers=2)
    model = _model()
    gpu_runner = ClipRunner(copy.deepcopy(model), "fc6", "cuda", amp=False)
    extract(records, ClipRunner(model, "fc6"), tmp_path / "cpu", options, progress=False)
    extract(records, gpu_runner, tmp_path / "gpu", options, progress=False)
    for p in paths:  # fp32 on both: cuDNN and oneDNN differ only in rounding
        np.testing.assert_allclose(np.load(tmp_path / "gpu" / f"{p.stem}.npy"),
                                   np.load(tmp_path / "cpu" / f"{p.stem}.npy"), rtol=1e-3, atol=1e-3)


def test_leftovers_are_found_by_exact_key(tmp_path):
    from c3dnet.features import OutputDir

    names = [".a.c3dpart-123-x1.npy.tmp", ".a.npy.abc.tmp", ".a.npy.b.c3dpart-9-y.npy.tmp", ".v[1].npy.zz.tmp",
             ".other.npy.q.tmp", "a.npy", ".a.npy"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    found = OutputDir(tmp_path).leftovers({"a", "a.npy.b", "v[1]"})
    assert sorted(found["a"]) == [".a.c3dpart-123-x1.npy.tmp", ".a.npy.abc.tmp"]
    assert found["a.npy.b"] == [".a.npy.b.c3dpart-9-y.npy.tmp"] and found["v[1]"] == [".v[1].npy.zz.tmp"]
    assert "other" not in found


def test_a_full_disk_while_writing_stops_extraction_and_loses_nothing(tmp_path, monkeypatch):
    import errno
    import importlib

    extract_module = importlib.import_module("c3dnet.features.writers")  # where finished videos are published

    paths = [_video(tmp_path / f"v{i}.avi", 10, seed=i) for i in range(5)]
    records = [VideoRecord(p, -1) for p in paths]
    runner = ClipRunner(_model(), "fc6")
    publish, calls = extract_module.publish, []

    def full_disk_on_third(tmp, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        publish(tmp, path)

    monkeypatch.setattr(extract_module, "publish", full_disk_on_third)
    options = ExtractOptions(FeatureRecipe(stride=4), batch_size=2, workers=1)
    from c3dnet.fileio import OutputError

    # raised on a writer thread, reported here as one line naming the folder, the video and the bytes
    with pytest.raises(OutputError, match=r"out: no space left on the device for the features of v2 \([\d,]+ bytes "
                                          r"needed, [\d,]+ free\); free some space, or choose another --out folder"):
        extract(records, runner, tmp_path / "out", options, progress=False)
    out = tmp_path / "out"
    assert not list(out.glob(".*.tmp")) and not list((out / ".locks").glob("*"))
    assert not (out / "v2.npy").exists()  # nothing that looks complete
    monkeypatch.setattr(extract_module, "publish", publish)
    summary = extract(records, runner, out, options, progress=False)  # the rerun finishes the rest
    assert summary.done + summary.skipped == 5 and len(read_manifest(out)) == 5
