"""`c3d extract` when the disk fills up, and when its inputs hold symlink loops or unreadable folders and files.

The full disk is real: a small tmpfs mounted for the test (the tests run as root, here and in CI; elsewhere they
skip, and under CI they fail if mounting is impossible). Unreadable folders are real too: root reads a chmod 000
folder anyway, so the command runs with the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)
dropped, as any other user would. The inputs are the FFmpeg-made corpus files of `tests.oracle`.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.data.sources import find_videos
from c3dnet.features.writers import npy_bytes
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, corpus_path, ffprobe

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
DIM = 1024  # fc6 width: 4 KiB a row, so that rows, not the small files, fill the disk
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_SPACE = re.compile(r"^c3d extract: error: (?P<folder>\S+): no space left on the device for (?P<what>.+?) "
                      r"\((?:(?P<needed>[\d,]+) bytes needed, )?(?P<free>[\d,]+) (?:bytes )?free\); free some space, "
                      r"or choose another --out folder$")


def run_c3d(*args: object, preexec_fn=None) -> subprocess.CompletedProcess:
    """`c3d -q ARGS...` in a fresh process (what a user runs), with one intra-op thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "c3dnet.cli", "-q", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec_fn)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (asserting that it failed cleanly, with no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])  # not 135 (SIGBUS), not 1 (a traceback)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def corpus_videos(folder: Path, names: list[str]) -> list[Path]:
    """Copies of corpus files as `folder/a.<ext>`, `b.<ext>`, ... (in that order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for letter, name in zip("abcdefgh", names):
        entry = CORPUS_BY_NAME[name]
        paths.append(folder / f"{letter}.{entry.ext}")
        shutil.copyfile(corpus_path(entry), paths[-1])
    return paths


def frame_count(path: Path) -> int:
    """Frames as ffprobe counts them (decoding the stream): the oracle for how many clips a video gives."""
    return int(ffprobe(path, "-count_frames", "-show_entries", "stream=nb_read_frames")["streams"][0]["nb_read_frames"])


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every published file of an extraction folder (the outputs, manifest, keys, failures), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_nothing_looks_complete(out: Path) -> None:
    """Every .npy has its manifest part, and no temporary file or lock is left behind."""
    npys = {p.stem for p in out.glob("*.npy")}
    parts = {p.stem for p in (out / ".parts").glob("*.json")}
    assert npys == parts, (npys, parts)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in (".parts", ".locks")]
    assert not list((out / ".locks").iterdir()) if (out / ".locks").is_dir() else True


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = C3D(tiny_config(fc_dim=DIM), preprocess=PRE, class_names=list("abcde")).eval()
    save_model(model, tmp_path / "w.safetensors")
    return tmp_path / "w.safetensors"


@pytest.fixture
def tmpfs(tmp_path: Path):
    """`make(name, size)`: a tmpfs of `size` bytes mounted at tmp_path/name (unmounted after the test)."""
    mounted: list[Path] = []

    def make(name: str, size: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        found = shutil.which("mount")
        proc = subprocess.run([found, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                              text=True) if found else None
        if proc is None or proc.returncode != 0:
            message = ("cannot mount a tmpfs, which the full-disk tests use as a real full disk (they need root): "
                       f"{proc.stderr.strip() if proc else 'no mount command'}")
            if os.environ.get("CI"):
                pytest.fail(message + "; CI runs the tests as root")
            pytest.skip(message)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def test_a_full_disk_is_one_line_and_the_rerun_resumes_to_identical_files(tmp_path, weights, tmpfs):
    videos = corpus_videos(tmp_path / "videos", ["h264_bf_g12_avi", "xvid_packed_ucf", "mpeg4_g12_avi"])
    clips = [frame_count(v) - PRE.clip_len + 1 for v in videos]  # stride 1
    first_rows = npy_bytes(clips[0], DIM)
    assert npy_bytes(clips[1], DIM) > 48 * PAGE  # the second video's rows cannot fit beside the first's
    disk = tmpfs("disk", (first_rows // PAGE + 1 + 48) * PAGE)  # the first video and its small files fit
    args = ["extract", "--weights", weights, "--stride", "1", "--batch-size", "1", "--workers", "1", "--no-progress",
            tmp_path / "videos"]

    line = one_line_error(run_c3d(*args, "--out", disk / "feats"))
    m = NO_SPACE.match(line)
    assert m, line
    assert m["folder"] == str(disk / "feats") and m["what"] == "the rows of b"
    needed, free = int(m["needed"].replace(",", "")), int(m["free"].replace(",", ""))
    assert needed >= npy_bytes(clips[1], DIM) > free  # checked before b was decoded: its rows never fit
    out = disk / "feats"
    assert_nothing_looks_complete(out)
    assert (out / "a.npy").is_file() and not (out / "b.npy").exists()  # a was finished, b never started

    resize(disk, 64 << 20)  # space freed: the rerun resumes
    rerun = run_c3d(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert "extracted 2 videos" in rerun.stdout and "1 already done" in rerun.stdout
    clean = run_c3d(*args, "--out", tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    resumed, reference = folder_files(out), folder_files(tmp_path / "clean")
    assert sorted(resumed) == sorted(reference) == sorted(
        [f"{v.stem}{s}" for v in videos for s in (".npy", ".times.csv")] + ["keys.csv", "manifest.jsonl"])
    for name in reference:
        if name != "manifest.jsonl":
            assert resumed[name] == reference[name], name  # byte for byte
    for v, n in zip(videos, clips):
        assert np.load(out / f"{v.stem}.npy").shape == (n, DIM)
    entries = lambda text: sorted(text.decode().splitlines())  # noqa: E731 - one line per video, any order
    assert entries(resumed["manifest.jsonl"]) == entries(reference["manifest.jsonl"])


@pytest.mark.slow
def test_every_write_that_meets_a_full_disk_is_reported_and_resumed(tmp_path, weights, tmpfs):
    """--video-mean (the issue's case: a raw OSError traceback) with the disk full at each point of the writing: the
    lock, the features, the times, the manifest part, the next video, the merged manifest."""
    corpus_videos(tmp_path / "videos", ["h264_bf_g12_avi", "mpeg4_g12_avi"])
    args = ["extract", "--weights", weights, "--video-mean", "--stride", "8", "--workers", "1", "--no-progress",
            tmp_path / "videos"]
    assert run_c3d(*args, "--out", tmp_path / "clean").returncode == 0
    reference = folder_files(tmp_path / "clean")
    outcomes = []
    for pages in range(8):
        disk = tmpfs(f"disk{pages}", 64 * PAGE)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - pages * PAGE))
        assert shutil.disk_usage(disk).free == pages * PAGE
        proc = run_c3d(*args, "--out", disk / "feats")
        if proc.returncode != 0:
            line = one_line_error(proc)
            assert NO_SPACE.match(line) and str(disk / "feats") in line, line
        assert_nothing_looks_complete(disk / "feats")
        outcomes.append((proc.returncode, len(list((disk / "feats").glob("*.npy")))))
        filler.unlink()
        rerun = run_c3d(*args, "--out", disk / "feats")
        assert rerun.returncode == 0, rerun.stderr
        resumed = folder_files(disk / "feats")
        assert {k: v for k, v in resumed.items() if k != "manifest.jsonl"} == \
            {k: v for k, v in reference.items() if k != "manifest.jsonl"}, pages
    assert outcomes[0] == (2, 0) and (2, 1) in outcomes  # failed before the first video, and between the two


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extraction folder of two videos, 24 rows of 4 KiB each."""
    root = tmp_path_factory.mktemp("extracted")
    torch.manual_seed(0)
    save_model(C3D(tiny_config(fc_dim=DIM), preprocess=PRE).eval(), root / "w.safetensors")
    corpus_videos(root / "videos", ["h264_bf_g12_avi", "mpeg4_g12_avi"])
    assert run_c3d("extract", "--weights", root / "w.safetensors", "--stride", "4", "--workers", "1", "--no-progress",
                   "--out", root / "feats", root / "videos").returncode == 0
    return root / "feats"


@pytest.mark.parametrize("to", ["feats.h5", "feats_txt", "feats.pt"])
def test_packing_onto_a_full_disk_is_one_line_and_leaves_nothing(extracted, tmpfs, to):
    disk = tmpfs("disk", 8 * PAGE)  # room for a little, not for 2 x 24 rows of 4 KiB
    line = one_line_error(run_c3d("pack", extracted, "--to", disk / to))
    assert re.fullmatch(rf"c3d pack: error: {re.escape(str(disk))}: no space left on the device for the pack {to} "
                        r"\([\d,]+ bytes needed, [\d,]+ free\); free some space, or choose another --to", line), line
    assert list(disk.iterdir()) == []  # neither the pack nor its temporaries
    resize(disk, 16 << 20)
    assert run_c3d("pack", extracted, "--to", disk / to).returncode == 0


# --------------------------------------------------------------------------------------------------- inputs


def _loops(folder: Path) -> dict[str, str]:
    """Links that cannot be listed, beside the videos of `folder`: {path: what failed.txt must say of it}."""
    os.symlink("self.mp4", folder / "self.mp4")  # a link to itself
    os.symlink("ping", folder / "pong")  # two links to each other
    os.symlink("pong", folder / "ping")
    (folder / "sub").mkdir(exist_ok=True)
    os.symlink("..", folder / "sub" / "up")  # a folder link back into a folder being searched
    os.symlink("missing.avi", folder / "gone.avi")  # a broken link named like a video
    loop = "a symlink loop (Too many levels of symbolic links): the link leads back to itself; fix or remove the link"
    broken = "a broken symlink (to 'missing.avi', which does not exist); fix or remove the link"
    return {str(folder / "self.mp4"): loop, str(folder / "ping"): loop, str(folder / "pong"): loop,
            str(folder / "sub" / "up"): f"a symlink loop: this is {folder.resolve()}, a folder it is inside; remove "
                                        "the link",
            str(folder / "gone.avi"): broken}


def _failed(out: Path) -> dict[str, str]:
    """failed.txt as {path: reason} (a line is "path<TAB>reason")."""
    return dict(line.split("\t", 1) for line in (out / "failed.txt").read_text(encoding="utf-8").splitlines())


def test_symlink_loops_are_each_a_line_of_failed_txt_and_the_rest_is_extracted(tmp_path, weights):
    folder = tmp_path / "videos"
    videos = corpus_videos(folder, ["h264_bf_g12_avi", "mpeg4_g12_avi"])
    (tmp_path / "elsewhere").mkdir()
    shutil.copyfile(corpus_path(CORPUS_BY_NAME["xvid_packed_key12"]), tmp_path / "elsewhere" / "c.avi")
    os.symlink(tmp_path / "elsewhere", folder / "linked")  # a symlinked folder of videos: searched too
    bad = _loops(folder)
    args = ["extract", "--weights", weights, "--stride", "16", "--workers", "1", "--no-progress", folder]

    line = one_line_error(run_c3d(*args, "--out", tmp_path / "strict"))  # without --skip-bad: the first, by name
    first = min(bad)  # the walk is sorted, files of a folder before its subfolders
    assert line == f"c3d extract: error: {first}: {bad[first]}; or pass --skip-bad to leave it out"
    assert not (tmp_path / "strict").exists()  # refused before the model was loaded

    proc = run_c3d(*args, "--skip-bad", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "extracted 3 videos" in proc.stdout and "(and 5 inputs that cannot be listed)" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert _failed(tmp_path / "out") == bad
    with open(tmp_path / "out" / "keys.csv", encoding="utf-8", newline="") as f:
        keys = dict(list(csv.reader(f))[1:])
    assert keys == {"a": str(videos[0]), "b": str(videos[1]), "c": str(tmp_path / "elsewhere" / "c.avi")}

    for path in bad:  # the links fixed: a rerun clears their lines, and has nothing left to extract
        os.unlink(path)
    proc = run_c3d(*args, "--skip-bad", "--out", tmp_path / "out")
    assert proc.returncode == 0 and "3 already done" in proc.stdout, proc.stderr
    assert (tmp_path / "out" / "failed.txt").read_text() == ""


def test_symlink_loops_in_a_list_file_name_the_list_line(tmp_path):
    folder = tmp_path / "videos"
    corpus_videos(folder, ["h264_bf_g12_avi"])
    os.symlink("loop.mp4", folder / "loop.mp4")
    (tmp_path / "list.txt").write_text("videos/a.avi\nvideos/loop.mp4\n")
    with pytest.raises(Exception, match=re.escape(f"{folder / 'loop.mp4'}: a symlink loop (Too many levels of "
                                                  f"symbolic links): the link leads back to itself; fix or remove the "
                                                  f"link (line 2 of {tmp_path / 'list.txt'}); or pass --skip-bad")):
        find_videos([tmp_path / "list.txt"])
    found = find_videos([tmp_path / "list.txt"], skip_bad=True)
    assert [r.path for r in found.records] == [folder / "a.avi"]
    assert [s.where for s in found.skipped] == [str(folder / "loop.mp4")]


def _without_root_privileges() -> None:
    """In the child before exec: drop the capabilities that let root read any file (PR_CAPBSET_DROP), so that
    permissions apply to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_privileges() -> bool:
    proc = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_without_root_privileges, capture_output=True)
    return proc.returncode == 0


def test_unreadable_folders_and_files_are_each_a_line_of_failed_txt(tmp_path, weights):
    folder = tmp_path / "videos"
    corpus_videos(folder, ["h264_bf_g12_avi", "mpeg4_g12_avi"])
    corpus_videos(folder / "locked", ["xvid_packed_key12"])
    os.chmod(folder / "b.avi", 0)
    os.chmod(folder / "locked", 0)
    try:
        drop = None
        if os.geteuid() == 0:
            # What is real as root: permissions do not stop it, so nothing is unreadable and every video is listed.
            assert [r.path.name for r in find_videos([folder]).records] == ["a.avi", "b.avi", "a.avi"]
            if not _can_drop_privileges():
                message = "cannot drop root's file capabilities (prctl PR_CAPBSET_DROP) to make a folder unreadable"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
            drop = _without_root_privileges
        args = ["extract", "--weights", weights, "--stride", "16", "--workers", "1", "--no-progress", folder]
        line = one_line_error(run_c3d(*args, "--out", tmp_path / "strict", preexec_fn=drop))
        assert line == (f"c3d extract: error: {folder / 'b.avi'}: cannot be read (Permission denied); fix its "
                        "permissions; or pass --skip-bad to leave it out")
        proc = run_c3d(*args, "--skip-bad", "--out", tmp_path / "out", preexec_fn=drop)
        assert proc.returncode == 0, proc.stderr
        assert "extracted 1 videos" in proc.stdout and "(and 2 inputs that cannot be listed)" in proc.stdout
        why = "cannot be read (Permission denied); fix its permissions"
        assert _failed(tmp_path / "out") == {str(folder / "b.avi"): why, str(folder / "locked"): why}
        assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text())["video"] == str(folder / "a.avi")
    finally:
        os.chmod(folder / "locked", 0o755)
        os.chmod(folder / "b.avi", 0o644)


def test_a_directory_that_vanishes_while_listed_is_reported(tmp_path, monkeypatch):
    """An OSError from os.scandir other than a permission (a folder removed meanwhile, an I/O error) is reported
    like an unreadable folder, never skipped silently."""
    (tmp_path / "v" / "gone").mkdir(parents=True)
    corpus_videos(tmp_path / "v", ["h264_bf_g12_avi"])
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "gone":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_videos([tmp_path / "v"], skip_bad=True)
    assert [r.path.name for r in found.records] == ["a.avi"]
    assert [(s.where, s.reason) for s in found.skipped] == [
        (str(tmp_path / "v" / "gone"), "cannot be read (Input/output error); fix its permissions")]
