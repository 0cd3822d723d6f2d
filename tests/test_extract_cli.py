"""`c3d extract` end to end: JSON-lines manifest, a SIGKILLed run resumed, two processes sharing one folder."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data import sampling
from c3dnet.data.encode import write_video
from c3dnet.data.sources import VideoRecord
from c3dnet.features import ClipRunner, ExtractOptions, extract
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests import killpoint
from tests.conftest import tiny_config

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)


def _videos(folder, lengths):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(lengths):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
        frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # (n, 48, 64, 3)
        paths.append(folder / f"clip{i:02d}.avi")
        write_video(paths[-1], frames)
    return paths


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = C3D(tiny_config(), preprocess=PRE, class_names=list("abcde")).eval()
    save_model(model, tmp_path / "w.safetensors")
    return tmp_path / "w.safetensors", model


def _cli(*args):
    return [sys.executable, "-m", "c3dnet.cli", *map(str, args)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def test_extract_cli_writes_npy_and_manifest(tmp_path, weights, capsys):
    w, model = weights
    videos = _videos(tmp_path / "videos", [6, 30])
    (tmp_path / "list.txt").write_text("videos/clip00.avi\nvideos/clip01.avi\n")
    rc = main(["extract", "--weights", str(w), "--out", str(tmp_path / "out"), "--stride", "8", "--video-mean",
               "--l2", "--no-progress", str(tmp_path / "list.txt")])
    assert rc == 0
    assert re.search(r"extracted 2 videos .* frames/s", capsys.readouterr().out)
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [d["key"] for d in lines] == ["clip00", "clip01"]
    assert set(lines[0]) == {"key", "output", "video", "layer", "num_frames", "fps", "clip_starts", "clip_len",
                             "frame_interval", "stride", "video_mean", "l2", "dim", "weights", "orientation",
                             "segments", "segment_rule", "sample_fps", "num_sampled_frames", "times", "crops",
                             "crop_order", "crop_axis", "crop_boxes", "pca_sha256", "pca_dim", "pca_file", "shape"}
    assert lines[0]["crops"] == "center" and lines[0]["shape"] == [lines[0]["dim"]]  # the video mean
    assert lines[0]["l2"] == "output" and lines[0]["times"] == "clip00.times.csv"
    assert lines[0]["orientation"] == "none"  # no display matrix in these files
    assert lines[0]["clip_starts"] == [0] and lines[1]["clip_starts"] == [0, 8, 16]
    assert lines[1]["num_frames"] == 30 and lines[1]["layer"] == "fc6" and lines[1]["video"] == str(videos[1])
    ref = extract([VideoRecord(videos[1], -1)], ClipRunner(model, "fc6"), tmp_path / "ref",
                  ExtractOptions(FeatureRecipe(stride=8, video_mean=True, l2=True)), progress=False)
    assert ref.done == 1
    feats = np.load(tmp_path / "out" / "clip01.npy")
    np.testing.assert_allclose(feats, np.load(tmp_path / "ref" / "clip01.npy"), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(feats) == pytest.approx(1.0, abs=1e-5)
    # A rerun finds everything done.
    assert main(["extract", "--weights", str(w), "--out", str(tmp_path / "out"), "--stride", "8", "--video-mean",
                 "--l2", "--no-progress", str(tmp_path / "videos")]) == 0
    printed = capsys.readouterr().out
    assert "extracted 0 videos" in printed and "2 already done" in printed


def test_extract_cli_compile_matches_eager(tmp_path, weights, caplog, monkeypatch):
    w, model = weights
    monkeypatch.setattr(logging.getLogger("c3dnet"), "propagate", True)
    videos = _videos(tmp_path / "videos", [12, 30, 21])
    with caplog.at_level("WARNING", logger="c3dnet"):
        assert main(["extract", "--weights", str(w), "--out", str(tmp_path / "out"), "--stride", "4", "--compile",
                     "--batch-size", "4", "--device", "cpu", "--no-progress", str(tmp_path / "videos")]) == 0
    assert "torch.compile failed" not in caplog.text  # compiled, not the eager fallback
    reference = _reference(model, videos, tmp_path, 4)
    for p in videos:
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{p.stem}.npy"), reference[p.stem],
                                   rtol=1e-4, atol=1e-5)


def _reference(model, videos, tmp_path, stride):
    extract([VideoRecord(p, -1) for p in videos], ClipRunner(model, "fc6"), tmp_path / "ref",
            ExtractOptions(FeatureRecipe(stride=stride), batch_size=4), progress=False)
    return {p.stem: np.load(tmp_path / "ref" / f"{p.stem}.npy") for p in videos}


@pytest.mark.slow
def test_sigkilled_extraction_resumes_to_identical_outputs(tmp_path, weights):
    w, model = weights
    videos = _videos(tmp_path / "videos", [60] * 8)
    out = tmp_path / "out"
    args = ["extract", "--weights", w, "--out", out, "--stride", "2", "--batch-size", "4", "--workers", "1",
            "--no-progress", tmp_path / "videos"]
    # Killed right after its second video is marked done: the writers stop there, so nothing races the kill.
    marker = tmp_path / "killed.marker"
    proc = killpoint.start(args, "c3dnet.features.output:OutputDir.write_part", "calls == 2", marker, _env())
    killpoint.kill_at_marker(proc, marker, timeout=120)
    done = len(list((out / ".parts").glob("*.json")))
    assert done == 2
    assert list((out / ".locks").glob("*.lock")), "a killed run leaves its lock behind"
    rerun = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} already done" in rerun.stdout and "0 in progress elsewhere" in rerun.stdout
    ref = _reference(model, videos, tmp_path, stride=2)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(d["key"] for d in manifest) == sorted(ref)
    for d in manifest:
        assert d["clip_starts"] == sampling.sliding_start_frames(60, 8, 2).tolist()
        np.testing.assert_allclose(np.load(out / d["output"]), ref[d["key"]], rtol=1e-5, atol=1e-5)
    assert not list(out.glob(".*.tmp")) and not list((out / ".locks").glob("*"))


@pytest.mark.slow
def test_two_processes_share_one_output_folder(tmp_path, weights):
    w, model = weights
    videos = _videos(tmp_path / "videos", [40 + 3 * i for i in range(12)])
    out = tmp_path / "out"
    args = ["extract", "--weights", w, "--out", out, "--stride", "4", "--batch-size", "4", "--workers", "1",
            "--no-progress", tmp_path / "videos"]
    procs = [subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    extracted = [int(re.search(r"extracted (\d+) videos", o[0]).group(1)) for o in outputs]
    assert sum(extracted) == 12  # each video extracted once: the locks split the work
    ref = _reference(model, videos, tmp_path, stride=4)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(d["key"] for d in manifest) == sorted(ref)
    for d in manifest:
        np.testing.assert_allclose(np.load(out / d["output"]), ref[d["key"]], rtol=1e-5, atol=1e-5)
    assert not list(out.glob(".*.tmp")) and not list((out / ".locks").glob("*"))


def test_extract_with_onnx_matches_pytorch(tmp_path, weights, capsys):
    from c3dnet.export import export_onnx

    w, model = weights
    videos = _videos(tmp_path / "videos", [20, 9])
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    assert main(["extract", "--onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"), "--stride", "4",
                 "--layer", "fc7", "--no-progress", str(tmp_path / "videos")]) == 0
    extract([VideoRecord(p, -1) for p in videos], ClipRunner(model, "fc7"), tmp_path / "ref",
            ExtractOptions(FeatureRecipe("fc7", stride=4)), progress=False)
    for p in videos:
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{p.stem}.npy"),
                                   np.load(tmp_path / "ref" / f"{p.stem}.npy"), rtol=1e-4, atol=1e-4)
    (entry,) = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()][:1]
    assert entry["weights"] == str(tmp_path / "m.onnx") and entry["layer"] == "fc7"


class _Cycle:
    """Garbage only the cyclic collector frees; its destructor records the process that freed it."""

    def __init__(self, record: Path) -> None:
        self.record, self.me = record, self

    def __del__(self) -> None:
        with open(self.record, "a") as f:
            f.write(f"{os.getpid()}\n")


@pytest.mark.parametrize("c3dnet_fork", [True, False], ids=["c3dnet's fork", "another program's fork"])
def test_a_forked_child_never_frees_what_it_inherited(tmp_path, c3dnet_fork):
    """The parent's cyclic garbage must not be freed in a child c3dnet forks (c3dnet.forks.FORK, which decoder
    processes, DataLoader workers and pools use). A decoder process of `c3d extract` hung this way: its collector
    freed an ONNX Runtime session left from an earlier `--onnx` run, and the session's destructor joined
    thread-pool threads that exist only in the parent. Forks that c3dnet does not make are left as Python makes
    them (importing c3dnet changes nothing in another program's children)."""
    import gc
    import multiprocessing

    from c3dnet.forks import FORK

    record = tmp_path / "freed_by.txt"
    gc.disable()
    try:
        _Cycle(record)  # unreachable at once, and no collection runs before the fork
        context = FORK if c3dnet_fork else multiprocessing.get_context("fork")
        child = context.Process(target=gc.collect)
        child.start()
        child.join(60)
    finally:
        gc.enable()
    gc.collect()
    assert child.exitcode == 0
    freed_by = record.read_text().split()
    if c3dnet_fork:
        assert freed_by == [str(os.getpid())]  # freed once, by the parent; the child never saw it
    else:
        assert sorted(freed_by) == sorted([str(os.getpid()), str(child.pid)])  # Python's own: both free it
