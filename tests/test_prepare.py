"""`c3d prepare`: frames and lists in the seed's format, resume after an interruption, failures reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from c3dnet.cli import main
from c3dnet.data import prepare as prepare_mod
from c3dnet.data.dataset import ClipDataset
from c3dnet.data.decode import read_frames
from c3dnet.data.prepare import extract_video, prepare_dataset
from c3dnet.data.sources import load_source
from c3dnet.errors import DataError
from c3dnet.preprocess import Preprocess
from tests.media import read_index, write_index_video

CLASSES = ["Jump", "Run"]
LENGTHS = {"v_Jump_g01_c01": 20, "v_Jump_g02_c01": 12, "v_Run_g01_c01": 18, "v_Run_g02_c01": 9}


def make_ucf(root: Path) -> Path:
    """A small UCF-101 layout of index videos (96x128), split 1: group 1 test, group 2 train; split 2 reversed."""
    data = root / "UCF"
    lists = data / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Jump\n2 Run\n")
    for stem, n in LENGTHS.items():
        write_index_video(data / stem.split("_")[1] / f"{stem}.avi", n, height=96, width=128)
    by_group = {g: [s for s in LENGTHS if f"_g0{g}_" in s] for g in (1, 2)}
    for split, (train_g, test_g) in {1: (2, 1), 2: (1, 2)}.items():
        (lists / f"trainlist0{split}.txt").write_text(
            "".join(f"{s.split('_')[1]}/{s}.avi {CLASSES.index(s.split('_')[1]) + 1}\n" for s in by_group[train_g]))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{s.split('_')[1]}/{s}.avi\n" for s in by_group[test_g]))
    return data


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> Path:
    return make_ucf(tmp_path_factory.mktemp("src"))


def test_prepare_layout_and_lists(ucf, tmp_path):
    out = tmp_path / "out"
    result = prepare_dataset(ucf, out, short_side=48, progress=False)
    assert (result.num_videos, result.extracted, result.already_done, result.failed) == (4, 4, 0, [])
    assert result.splits == [1, 2]
    assert (out / "classes.txt").read_text() == "Jump\nRun\n"
    assert (out / "train_split1.txt").read_text() == "frames/Jump/v_Jump_g02_c01 12 0\nframes/Run/v_Run_g02_c01 9 1\n"
    assert (out / "test_split2.txt").read_text() == "frames/Jump/v_Jump_g02_c01 12 0\nframes/Run/v_Run_g02_c01 9 1\n"
    assert (out / "failed.txt").read_text() == ""
    # frames resized at extraction: 96x128 -> short side 48 -> 48x64, numbered from 1, in order
    src = load_source(out, "test", 1)
    assert src.format == "frames" and src.class_names == CLASSES
    rec = src.records[0]
    assert rec.num_frames == 20 and sorted(p.name for p in rec.path.iterdir())[:2] == ["img_00001.jpg", "img_00002.jpg"]
    frames = read_frames(rec, np.arange(20))
    assert frames.shape == (20, 48, 64, 3) and [read_index(f) for f in frames] == list(range(20))
    # and straight into a dataset: frames already at the target size are not resized again
    clips, label, _ = ClipDataset(src.records, "val", Preprocess(short_side=48, crop_size=48, clip_len=8))[1]
    assert clips.shape == (1, 3, 8, 48, 48) and label == 1


def test_prepare_resumes_identically(ucf, tmp_path):
    clean = tmp_path / "clean"
    prepare_dataset(ucf, clean, short_side=0, progress=False)
    out = tmp_path / "out"
    prepare_dataset(ucf, out, short_side=0, progress=False)
    # simulate an interruption: one video not yet renamed into place (its partial folder left by a dead process),
    # another one's partial folder from a process still alive elsewhere, lists not yet written
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = prepare_mod.socket.gethostname()
    done = out / "frames/Run/v_Run_g01_c01"
    partial = done.parent / f".{done.name}.partial-{host}-{dead.stdout.strip()}"
    done.rename(partial)
    (partial / "img_00007.jpg").unlink()
    (partial / "img_00006.jpg").write_bytes(b"half a jpeg")
    for name in ("train_split1.txt", "test_split2.txt", "classes.txt"):
        (out / name).unlink()
    result = prepare_dataset(ucf, out, short_side=0, progress=False)
    assert (result.extracted, result.already_done) == (1, 3)
    assert _tree(out) == _tree(clean)  # complete and byte-identical, stale partial folder gone
    again = prepare_dataset(ucf, out, short_side=0, progress=False)
    assert (again.extracted, again.already_done) == (0, 4)


def test_extract_video_keeps_live_partials(ucf, tmp_path):
    dst = tmp_path / "f" / "vid"
    live = dst.parent / f".vid.partial-{prepare_mod.socket.gethostname()}-1"  # pid 1 is always alive
    live.mkdir(parents=True)
    assert extract_video(ucf / "Jump/v_Jump_g01_c01.avi", dst, short_side=0) == 20
    assert live.is_dir() and len(list(dst.glob("img_*.jpg"))) == 20 and (dst / "timing.json").is_file()


def test_prepare_bad_video(ucf, tmp_path):
    data = tmp_path / "UCF"
    subprocess.run(["cp", "-r", str(ucf), str(data)], check=True)
    bad = data / "Run/v_Run_g02_c01.avi"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"1 video\(s\) failed, first: .*v_Run_g02_c01\.avi.*--skip-bad"):
        prepare_dataset(data, out, split=1, progress=False)
    assert "v_Run_g02_c01.avi\t" in (out / "failed.txt").read_text()
    assert not (out / "train_split1.txt").exists()
    result = prepare_dataset(data, out, split=1, skip_bad=True, progress=False)
    assert result.already_done == 3 and [Path(f.where).name for f in result.failed] == ["v_Run_g02_c01.avi"]
    assert (out / "train_split1.txt").read_text() == "frames/Jump/v_Jump_g02_c01 12 0\n"
    assert not list((out / "frames/Run").glob(".*"))  # no partial folder left behind


def test_cli_prepare(ucf, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["prepare", "--data", str(ucf), "--out", str(out), "--split", "1", "--workers", "2",
               "--short-side", "32", "--quality", "90"])
    assert rc == 0
    assert "prepared 4 videos (4 extracted, 0 already done, 0 failed) for splits [1]" in capsys.readouterr().out
    assert not (out / "train_split2.txt").exists()
    assert read_frames(load_source(out, "train").records[0], np.array([0])).shape == (1, 32, 43, 3)
    rc = main(["prepare", "--data", str(out), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "already holds frame folders" in capsys.readouterr().err


def test_prepare_killed_midway_then_rerun(ucf, tmp_path):
    """A process killed hard while writing frames (no cleanup runs), then a rerun: the same tree as a clean run."""
    out = tmp_path / "out"
    code = (
        "import os\n"
        "from PIL import Image\n"
        "save, calls = Image.Image.save, [0]\n"
        "def dying_save(self, *a, **k):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 30:\n"
        "        os._exit(9)\n"
        "    return save(self, *a, **k)\n"
        "Image.Image.save = dying_save\n"
        "from c3dnet.data.prepare import prepare_dataset\n"
        f"prepare_dataset({str(ucf)!r}, {str(out)!r}, short_side=0, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert list((out / "frames").rglob(".*.partial-*")), "the kill should leave a partial folder"
    assert not (out / "train_split1.txt").exists()
    result = prepare_dataset(ucf, out, short_side=0, progress=False)
    assert result.already_done >= 1 and result.extracted + result.already_done == 4
    clean = tmp_path / "clean"
    prepare_dataset(ucf, clean, short_side=0, progress=False)
    assert _tree(out) == _tree(clean)
