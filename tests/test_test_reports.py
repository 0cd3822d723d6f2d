"""`c3d test`: one clear line for a corrupt video, and reports that one test never writes over another's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from c3dnet.model import C3D
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.engine_helpers import make_frame_dataset, tiny_train_config
from tests.oracle import CORPUS_BY_NAME, corpus_path
from tests.test_extract_faults import PRE, one_line_error, run_c3d

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Weights, and two 3-class frame datasets of the same shape with different videos: (weights, d1, d2)."""
    root = tmp_path_factory.mktemp("reports")
    torch.manual_seed(0)
    model = C3D(tiny_config(num_classes=3), preprocess=tiny_train_config().preprocess_record(), class_names=NAMES)
    save_model(model, root / "w.safetensors")
    d1 = make_frame_dataset(root / "UCF-mini", train_per_class=1, test_per_class=1, num_frames=20, seed=1)
    d2 = make_frame_dataset(root / "HMDB-mini", train_per_class=1, test_per_class=2, num_frames=20, seed=2)
    return root / "w.safetensors", d1, d2


def _test(weights: Path, data: Path, *extra: object) -> list[str]:
    return ["test", "--weights", weights, "--data", data, "--workers", "0", "--device", "cpu", "--clips", "2",
            "--no-progress", "--json", *extra]


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


def test_the_default_out_is_one_folder_per_weights_data_and_split(data: tuple[Path, Path, Path]) -> None:
    weights, d1, d2 = data
    assert run_c3d(*_test(weights, d1)).returncode == 0
    assert run_c3d(*_test(weights, d2)).returncode == 0  # the same weights on other data: a folder of its own
    first, second = weights.parent / "test_w_UCF-mini_split1", weights.parent / "test_w_HMDB-mini_split1"
    assert json.loads((first / "metrics.json").read_text())["num_videos"] == 3
    assert json.loads((second / "metrics.json").read_text())["num_videos"] == 6
    assert json.loads((first / "test_run.json").read_text()) == {
        "weights": str(weights), "data": str(d1), "split": 1, "splits": None}
    again = run_c3d(*_test(weights, d1, "--clips", "3"))  # the same test again replaces its own reports
    assert again.returncode == 0, again.stderr
    assert json.loads((first / "metrics.json").read_text())["clips_per_video"] == 3


def test_another_tests_reports_are_refused_without_overwrite(data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    weights, d1, d2 = data
    out = tmp_path / "reports"
    assert run_c3d(*_test(weights, d1, "--out", out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line_error(run_c3d(*_test(weights, d2, "--out", out)))
    assert line == (f"c3d test: error: {out}: holds the reports of another test (data {d1}; this one: data {d2}); "
                    "pass --overwrite to replace them, or choose another --out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert run_c3d(*_test(weights, d2, "--out", out, "--overwrite")).returncode == 0
    assert json.loads((out / "test_run.json").read_text())["data"] == str(d2)
    assert json.loads((out / "metrics.json").read_text())["num_videos"] == 6

    (out / "test_run.json").unlink()  # reports that do not say which test they are of (an earlier c3dnet's)
    line = one_line_error(run_c3d(*_test(weights, d2, "--out", out)))
    assert "holds the reports of an earlier test (without test_run.json to say which)" in line
