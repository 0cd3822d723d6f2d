"""Video keys on name clashes: the rule, one log line per clash, and `keys.csv` beside the features and in packs.

Real clashing files: FFmpeg-made corpus files copied as `bikes.mp4`, `bikes.mov` and `other/bikes.avi`. The
expected keys are computed here from the rule (SHA-1 of each file's resolved path), not by c3dnet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c3dnet.model import C3D
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, corpus_path
from tests.test_extract_faults import PRE, run_c3d

CLASHING = {"bikes.mp4": "h264_bf_g12_mp4", "bikes.mov": "h264_bf_g12_mov", "other/bikes.avi": "xvid_packed_key12",
            "unique.mkv": "h264_bf_g12_mkv"}


def expected_key(path: Path) -> str:
    return f"{path.stem}-{hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:8]}"


def read_keys(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["key", "video"]
    return dict(rows[1:])


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Weights, and the clashing videos under tmp_path/videos: {expected key: resolved path}."""
    torch.manual_seed(0)
    save_model(C3D(tiny_config(), preprocess=PRE, class_names=list("abcde")).eval(), tmp_path / "w.safetensors")
    expected = {}
    for rel, name in CLASHING.items():
        path = tmp_path / "videos" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_path(CORPUS_BY_NAME[name]), path)
        expected[expected_key(path) if path.stem == "bikes" else path.stem] = os.path.realpath(path)
    return tmp_path / "w.safetensors", expected


def test_clashing_names_are_renamed_by_the_rule_logged_once_and_listed_in_keys_csv(tmp_path, setup):
    weights, expected = setup
    renamed = sorted(k for k in expected if k.startswith("bikes-"))
    assert len(renamed) == 3
    # A second process shares the folder at the same time, with other inputs: keys.csv is merged, not replaced.
    solo = tmp_path / "elsewhere" / "solo.avi"
    solo.parent.mkdir()
    shutil.copyfile(corpus_path(CORPUS_BY_NAME["mpeg4_g12_avi"]), solo)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    common = ["extract", "--weights", weights, "--out", tmp_path / "out", "--stride", "16", "--workers", "1",
              "--no-progress"]
    procs = [subprocess.Popen([sys.executable, "-m", "c3dnet.cli", *map(str, [*common, inputs])], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for inputs in (tmp_path / "videos", solo)]
    (_, log), (_, solo_log) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [0, 0], (log, solo_log)

    clash_lines = [line for line in log.splitlines() if "inputs are named" in line]
    assert len(clash_lines) == 1, log  # the renaming is logged once
    assert "3 inputs are named 'bikes'" in clash_lines[0]
    for key in renamed:
        assert f"{key} ({tmp_path / 'videos'}/" in clash_lines[0]
    assert "inputs are named" not in solo_log

    out = tmp_path / "out"
    keys = read_keys(out / "keys.csv")
    assert keys == {**expected, "solo": str(solo)}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {d["key"]: d["video"] for d in manifest} == keys
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(keys)

    # pack: a folder gets keys.csv; HDF5 keeps the mapping in each video's `video` attribute, the root only videos
    assert run_c3d("pack", out, "--to", tmp_path / "txt").returncode == 0
    assert (tmp_path / "txt" / "keys.csv").read_bytes() == (out / "keys.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "txt").glob("*_C.txt")) == sorted(f"{k}_C.txt" for k in keys)
    h5py = pytest.importorskip("h5py")
    for dataset_name in (None, "c3d_features"):
        packed = tmp_path / f"feats_{dataset_name}.h5"
        extra = ["--dataset-name", dataset_name] if dataset_name else []
        assert run_c3d("pack", out, "--to", packed, *extra).returncode == 0
        with h5py.File(packed, "r") as f:
            assert sorted(f) == sorted(keys)
            assert {k: f[k].attrs["video"] for k in f} == keys
            if dataset_name:
                assert {k: f[k][dataset_name].attrs["video"] for k in f} == keys


def test_timelines_of_clashing_names_use_the_same_keys(tmp_path, setup):
    weights, expected = setup
    proc = run_c3d("predict", "--weights", weights, "--timeline", tmp_path / "tl", "--stride", "16",
                   tmp_path / "videos")
    assert proc.returncode == 0, proc.stderr
    found = {p.name.removesuffix(".timeline.json"): json.loads(p.read_text())["video"]
             for p in (tmp_path / "tl").glob("*.timeline.json")}
    assert {k: os.path.realpath(v) for k, v in found.items()} == expected
