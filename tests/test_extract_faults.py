"""`c3d extract` when its inputs hold symlink loops or unreadable folders and files.

Unreadable folders are real: root reads a chmod 000 folder anyway, so the command runs with the capabilities that
let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped, as any other user would. The inputs are the FFmpeg-made
corpus files of `tests.oracle`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c3dnet.data.sources import find_videos
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, corpus_path

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
DIM = 1024  # fc6 width


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


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = C3D(tiny_config(fc_dim=DIM), preprocess=PRE, class_names=list("abcde")).eval()
    save_model(model, tmp_path / "w.safetensors")
    return tmp_path / "w.safetensors"


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
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    keys = {d["key"]: d["video"] for d in manifest}
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
