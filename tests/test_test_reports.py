"""`c3d test`: one clear line for a corrupt video."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from c3dnet.model import C3D
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, corpus_path
from tests.test_extract_faults import PRE, one_line_error, run_c3d


@pytest.mark.parametrize("workers", ["1", "0"], ids=["loader-process", "in-process"])
def test_a_corrupt_video_is_one_line_naming_it(tmp_path: Path, workers: str) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    good = corpus_path(CORPUS_BY_NAME["h264_bf_g12_avi"])
    shutil.copyfile(good, videos / "good.avi")
    (videos / "bad.avi").write_bytes(good.read_bytes()[:3000])  # a real file, cut off after its headers
    (videos / "list.txt").write_text("good.avi 0\nbad.avi 1\n")
    (videos / "classes.txt").write_text("x\ny\n")
    torch.manual_seed(0)
    save_model(C3D(tiny_config(num_classes=2), preprocess=PRE, class_names=["x", "y"]), tmp_path / "w.safetensors")
    args = ["test", "--weights", tmp_path / "w.safetensors", "--data", videos / "list.txt", "--workers", workers,
            "--device", "cpu", "--clips", "2", "--no-progress", "--out", tmp_path / "reports"]
    line = one_line_error(run_c3d(*args))  # a loader process's error arrives wrapped in its traceback: unwrapped
    assert line.startswith(f"c3d test: error: {videos / 'bad.avi'}: ")
    assert "--skip-bad" in line and "remove it" in line
    skipped = run_c3d(*args, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "Traceback" not in skipped.stderr
