"""Downloading weights by name from a real local HTTP server (`tests/weights_server.py`): each format loads after
download, resume, retries, two processes at once, torchrun ranks, mirror, offline, and every bad input (404/403,
dropped connection, corrupt or truncated file, slow host, an HTML page, a full disk) leaving nothing under the
final name. C3DNET_HOME points into tmp_path; nothing leaves the machine."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from c3dnet.cli import main
from c3dnet.errors import WeightsError
from c3dnet.preprocess import CAFFE_PREPROCESS, SEED_PREPROCESS
from c3dnet.weights import load_model, save_model
from c3dnet.weights.download import Settings, cache_dir, download, fetch, recorded_digest
from c3dnet.weights.registry import Pretrained, register, unregister
from tests.test_mmengine_checkpoints import mmengine_checkpoint, save_checkpoint
from tests.test_weights import FOREIGN, _model, caffe_state
from tests.weights_server import WeightServer

ROOT = Path(__file__).resolve().parent.parent
FAST = Settings(timeout=0.5, retries=0, backoff=0.01)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C3DNET_HOME", str(tmp_path / "home"))
    for name in ("C3DNET_WEIGHTS_MIRROR", "C3DNET_OFFLINE", "WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("C3DNET_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setenv("C3DNET_DOWNLOAD_RETRIES", "2")
    monkeypatch.setenv("C3DNET_DOWNLOAD_BACKOFF", "0.01")
    return tmp_path / "home"


@pytest.fixture
def server() -> Iterator[WeightServer]:
    with WeightServer() as s:
        yield s


@pytest.fixture
def entries() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


def _entry(server: WeightServer, entries: list[str], name: str, file_name: str, data: bytes, fmt: str,
           prefix: bool = True, **fields) -> Pretrained:
    server.add(file_name, data)
    entry = Pretrained(name=name, url=server.url(file_name), file_name=file_name, format=fmt,
                       sha256_prefix=hashlib.sha256(data).hexdigest()[:8] if prefix else None,
                       architecture="tiny C3D (test)", num_classes=fields.pop("num_classes", None),
                       class_names=fields.pop("class_names", None),
                       preprocess=fields.pop("preprocess", SEED_PREPROCESS),
                       accuracy="", reported_in="tests", **fields)
    register(entry, replace=True)
    entries.append(name)
    return entry


def _files(tmp_path: Path) -> dict[str, tuple[bytes, torch.nn.Module]]:
    model = _model(**FOREIGN)
    mm = save_checkpoint(mmengine_checkpoint(model), tmp_path / "mm.pth").read_bytes()
    caffe = pickle.dumps({k: v.numpy() for k, v in caffe_state(model).items()}, protocol=2)
    save_model(model, tmp_path / "n.safetensors")
    return {"mmaction2": (mm, model), "caffe": (caffe, model), "native": ((tmp_path / "n.safetensors").read_bytes(),
                                                                           model)}


def _only_final_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def test_each_format_loads_by_name_after_download_then_from_the_cache(tmp_path: Path, server: WeightServer,
                                                                        entries: list[str], home: Path) -> None:
    names = [f"w{i}" for i in range(5)]
    for (fmt, (data, model)), file_name in zip(_files(tmp_path).items(), ("mm_20220811-x.pth", "c3d.pickle",
                                                                          "n.safetensors")):
        name = f"tiny-{fmt}"
        _entry(server, entries, name, file_name, data, fmt, prefix=fmt != "caffe", class_names=tuple(names),
               num_classes=5, preprocess=CAFFE_PREPROCESS if fmt == "caffe" else SEED_PREPROCESS)
        loaded = load_model(name)
        if fmt != "caffe":  # Caffe conversions use Caffe pooling: same tensors, another pool5
            for key, value in model.state_dict().items():
                torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
        else:
            assert loaded.config.pool5 == "caffe" and loaded.preprocess.channel_order == "BGR"
            torch.testing.assert_close(loaded.fc6.weight, model.fc6.weight, rtol=0, atol=0)
        assert loaded.class_names == names  # the registry's, since none of these files records any
        cached = cache_dir() / file_name
        assert recorded_digest(cached) == hashlib.sha256(data).hexdigest()
        assert len(server.gets(file_name)) == 1
        load_model(name)  # from the cache, checked against the recorded digest: no second request
        assert len(server.gets(file_name)) == 1
    assert _only_final_files(home) == sorted(["mm_20220811-x.pth", "mm_20220811-x.pth.sha256", "c3d.pickle",
                                              "c3d.pickle.sha256", "n.safetensors", "n.safetensors.sha256"])


def test_progress_false_hides_the_download_bar(tmp_path: Path, server: WeightServer, entries: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # What `--no-progress` of test/predict/extract passes: the bar (a line on a non-terminal) is the only output.
    data, _ = _files(tmp_path)["native"]
    for name, progress in (("quiet", False), ("shown", True)):
        _entry(server, entries, name, f"{name}.safetensors", data, "native")
        capsys.readouterr()
        load_model(name, progress=progress)
        bar = f"{name}.safetensors: {len(data)}/{len(data)} B in"
        assert (bar in capsys.readouterr().err) is progress


def test_a_changed_cache_file_fails_its_recorded_digest(tmp_path: Path, server: WeightServer,
                                                          entries: list[str]) -> None:
    data, _ = _files(tmp_path)["caffe"]
    _entry(server, entries, "tiny-caffe", "c3d.pickle", data, "caffe", prefix=False)
    path = fetch("tiny-caffe")
    digest = hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(WeightsError, match=rf"c3d.pickle: SHA-256 [0-9a-f]{{64}} does not match the digest recorded "
                                           rf"at its first download {digest}.*removed from the cache"):
        load_model("tiny-caffe")
    assert not path.exists()
    assert load_model("tiny-caffe") is not None and len(server.gets("c3d.pickle")) == 2


def test_an_existing_path_wins_over_a_name(tmp_path: Path, server: WeightServer, entries: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = _files(tmp_path)["native"]
    _entry(server, entries, "tiny-native", "n.safetensors", data, "native")
    monkeypatch.chdir(tmp_path)
    save_model(_model(**FOREIGN, num_classes=7), tmp_path / "tiny-native")
    assert load_model("tiny-native").config.num_classes == 7
    assert server.state.requests == []


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(WeightsError, match=r"c3d-ucf101-mmaction: no such weights file, and not a known weight "
                                           r"name \(did you mean 'c3d-ucf101-mmaction2'"):
        load_model("c3d-ucf101-mmaction")
    with pytest.raises(WeightsError, match=r"missing.pth: no such weights file$"):
        load_model("missing.pth")  # a path, not a name: the plain message


def test_resume_after_an_interrupted_download(tmp_path: Path, server: WeightServer, entries: list[str],
                                               home: Path) -> None:
    data, model = _files(tmp_path)["mmaction2"]
    entry = _entry(server, entries, "tiny-mm", "mm.pth", data, "mmaction2")
    server.state.plans["mm.pth"].extend(["drop"])
    with pytest.raises(WeightsError, match=r"tiny-mm: download failed: the connection to .*mm.pth broke"):
        fetch("tiny-mm", FAST)
    part = cache_dir() / "mm.pth.part"
    assert 0 < part.stat().st_size < len(data) and not (cache_dir() / "mm.pth").exists()
    assert fetch("tiny-mm", FAST) == cache_dir() / "mm.pth"
    assert server.gets("mm.pth") == [None, f"bytes={part.stat().st_size if part.exists() else len(data) // 2}-"]
    assert (cache_dir() / "mm.pth").read_bytes() == data and not part.exists()
    # Within one call: a drop, then a retry that asks for the rest.
    (cache_dir() / "mm.pth").unlink()
    server.state.requests.clear()
    server.state.plans["mm.pth"].extend(["drop"])
    download(entry, cache_dir() / "mm.pth", Settings(timeout=2, retries=1, backoff=0.01), progress=False)
    assert server.gets("mm.pth") == [None, f"bytes={len(data) // 2}-"]
    torch.testing.assert_close(load_model("tiny-mm").fc6.weight, model.fc6.weight, rtol=0, atol=0)


def test_retries_on_server_errors_and_restarts_when_the_range_is_ignored(tmp_path: Path, server: WeightServer,
                                                                          entries: list[str]) -> None:
    data, _ = _files(tmp_path)["native"]
    _entry(server, entries, "tiny-native", "n.safetensors", data, "native")
    server.state.plans["n.safetensors"].extend(["500", "drop", "no-range"])
    path = fetch("tiny-native", Settings(timeout=2, retries=3, backoff=0.01), progress=False)
    assert path.read_bytes() == data
    assert server.gets("n.safetensors") == [None, None, f"bytes={len(data) // 2}-"]


@pytest.mark.parametrize(("plan", "pattern"), [
    ("404", r"HTTP 404 from http://127.0.0.1:\d+/files/x.pth: not found"),
    ("403", r"HTTP 403 from .*x.pth: access denied"),
    ("slow", r"no data from .*x.pth for too long \(timed out\) after 2 attempts"),
    ("drop", r"the connection to .*x.pth broke"),
    ("corrupt", r"x.pth: SHA-256 [0-9a-f]{64} does not match the published SHA-256 prefix [0-9a-f]{8}; .* was removed"),
    ("truncated", r"x.pth: SHA-256 [0-9a-f]{64} does not match the published SHA-256 prefix"),
    ("html", r"x.pth: the server sent a web page \(Content-Type text/html"),
    ("html-typed", r"x.pth: the server sent a web page, not the weight file \(it starts with b'<!DOCTYPE html>"),
])
def test_bad_downloads_give_a_clear_error_and_leave_no_file_under_the_final_name(
        tmp_path: Path, server: WeightServer, entries: list[str], home: Path, plan: str, pattern: str) -> None:
    data, _ = _files(tmp_path)["native"]
    _entry(server, entries, "tiny", "x.pth", data, "native")
    server.state.plans["x.pth"].extend([plan] * 2)
    server.state.slow_seconds = 1.0
    start = time.monotonic()
    with pytest.raises(WeightsError, match=pattern):
        fetch("tiny", Settings(timeout=0.3, retries=1 if plan == "slow" else 0, backoff=0.01), progress=False)
    assert time.monotonic() - start < 5
    leftover = _only_final_files(home)
    assert "x.pth" not in leftover and "x.pth.sha256" not in leftover
    # A dropped connection keeps its part file for a resume; everything else leaves nothing behind.
    assert leftover == (["x.pth.part"] if plan == "drop" else [])


def test_a_full_disk_leaves_nothing_behind(tmp_path: Path, server: WeightServer, entries: list[str],
                                           home: Path) -> None:
    data, _ = _files(tmp_path)["mmaction2"]
    entry = _entry(server, entries, "tiny-mm", "mm.pth", data, "mmaction2")

    class FullDisk:  # a file that takes 64 kB and then reports the disk full, as write(2) does
        def __init__(self, path: Path, mode: str) -> None:
            self.file, self.left = open(path, mode), 1 << 16

        def write(self, block: bytes) -> int:
            if len(block) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(block)
            return self.file.write(block)

        def close(self) -> None:
            self.file.close()

    with pytest.raises(WeightsError, match=r"weights: no space left on the device while downloading mm.pth .*free "
                                           r"some space, or point C3DNET_HOME at a larger disk"):
        download(entry, cache_dir() / "mm.pth", FAST, progress=False, open_part=FullDisk)
    assert _only_final_files(home) == []


def test_offline_mode_never_touches_the_network(tmp_path: Path, server: WeightServer, entries: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = _files(tmp_path)["native"]
    entry = _entry(server, entries, "tiny-native", "n.safetensors", data, "native")
    monkeypatch.setenv("C3DNET_OFFLINE", "1")
    with pytest.raises(WeightsError, match=rf"tiny-native: not in the cache and C3DNET_OFFLINE is set.*Put "
                                           rf"n.safetensors at {cache_dir() / 'n.safetensors'} \(from {entry.url}\)"):
        load_model("tiny-native")
    (cache_dir()).mkdir(parents=True)
    (cache_dir() / "n.safetensors").write_bytes(data)  # put there by hand, as the message says
    torch.testing.assert_close(load_model("tiny-native").fc6.weight, model.fc6.weight)
    assert server.state.requests == []
    assert recorded_digest(cache_dir() / "n.safetensors") == hashlib.sha256(data).hexdigest()


def test_the_mirror_serves_every_file_by_name(tmp_path: Path, server: WeightServer, entries: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = _files(tmp_path)["caffe"]
    _entry(server, entries, "tiny-caffe", "c3d.pickle", data, "caffe", prefix=False)
    monkeypatch.setenv("C3DNET_WEIGHTS_MIRROR", f"{server.base}/mirror/")
    load_model("tiny-caffe")
    assert [path for path, _ in server.state.requests] == ["/mirror/c3d.pickle"]
    # The built-in entries go to the mirror too, under their file names (an HTML error page here).
    server.add("c3d_sports1m_pretrain_20201016-dcc47ddc.pth", b"", "html")
    with pytest.raises(WeightsError, match="the server sent a web page"):
        fetch("c3d-sports1m-mmaction2", FAST)
    assert server.state.requests[-1][0] == "/mirror/c3d_sports1m_pretrain_20201016-dcc47ddc.pth"


_CHILD = r"""
import json, sys, logging
from c3dnet.log import setup_logging
from c3dnet.weights.registry import Pretrained, register
from c3dnet.preprocess import SEED_PREPROCESS
from c3dnet.weights import load_model
setup_logging(logging.INFO)
url, prefix = sys.argv[1], sys.argv[2]
register(Pretrained("tiny-mm", url, "mm.pth", "mmaction2", prefix, "tiny", None, None, SEED_PREPROCESS, "", "tests"))
model = load_model("tiny-mm", num_classes=5)
print(json.dumps({"fc6": float(model.fc6.weight.double().sum())}))
"""


@pytest.mark.slow
def test_two_processes_download_once_and_torchrun_rank_0_goes_first(tmp_path: Path, server: WeightServer,
                                                                       home: Path) -> None:
    data, model = _files(tmp_path)["mmaction2"]
    server.add("mm.pth", data)
    server.state.chunk_delay = 0.05  # the download takes a while: the second process arrives during it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2"}
    args = [sys.executable, "-c", _CHILD, server.url("mm.pth"), hashlib.sha256(data).hexdigest()[:8]]
    rank1 = subprocess.Popen(args, env={**env, "LOCAL_RANK": "1", "RANK": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(1.0)  # rank 1 is up first, and waits for rank 0
    rank0 = subprocess.Popen(args, env={**env, "LOCAL_RANK": "0", "RANK": "0"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    outs = [p.communicate(timeout=120) for p in (rank0, rank1)]
    assert rank0.returncode == 0 and rank1.returncode == 0, outs
    expected = float(model.fc6.weight.detach().double().sum())
    for out, _ in outs:
        assert json.loads(out.strip().splitlines()[-1])["fc6"] == pytest.approx(expected)
    assert server.gets("mm.pth") == [None]  # one download for both
    assert "downloading tiny-mm" in outs[0][1]
    assert "downloading" not in outs[1][1].replace("is downloading", "")
    assert _only_final_files(home) == ["mm.pth", "mm.pth.sha256"]


def test_weights_cli_lists_gets_and_verifies(tmp_path: Path, server: WeightServer, entries: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["c3d-ucf101-mmaction2"]["sha256_prefix"] == "31723200"
    assert listed["c3d-ucf101-mmaction2"]["class_names"][:2] == ["ApplyEyeMakeup", "ApplyLipstick"]
    assert listed["c3d-ucf101-paddle"]["url"] is None and "pan.baidu.com" in listed["c3d-ucf101-paddle"]["manual"]
    assert main(["weights", "list"]) == 0
    assert "83.08 top-1 / 95.93 top-5" in capsys.readouterr().out

    data, _ = _files(tmp_path)["native"]
    _entry(server, entries, "tiny-native", "n.safetensors", data, "native")
    assert main(["weights", "get", "tiny-native", "--no-progress"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == cache_dir() / "n.safetensors" and path.read_bytes() == data
    assert main(["weights", "verify"]) == 0
    assert f"{path}: ok" in capsys.readouterr().out
    assert main(["info", "tiny-native", "--json"]) == 0  # a name where a command takes a weight path
    assert json.loads(capsys.readouterr().out)["path"] == str(path)
    copy = tmp_path / "elsewhere" / "n.safetensors"  # a file outside the cache, matched by its name
    copy.parent.mkdir()
    copy.write_bytes(data[:-1] + b"\0")
    assert main(["weights", "verify", str(copy), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)
    assert row["name"] == "tiny-native" and row["status"].startswith("MISMATCH")
    assert row["expected"] == hashlib.sha256(data).hexdigest()
    assert main(["weights", "verify", "c3d-ucf101-mmaction"]) == 2
    assert "did you mean 'c3d-ucf101-mmaction2'" in capsys.readouterr().err
    assert main(["weights", "get", "c3d-ucf101-paddle"]) == 2
    assert "no direct download; get best_model.pdparams from https://pan.baidu.com" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "extract"])
def test_no_progress_reaches_the_download_bar(tmp_path: Path, server: WeightServer, entries: list[str],
                                               capsys: pytest.CaptureFixture[str], command: str) -> None:
    """`--no-progress` hides every bar of a command, the download's of a weight name too."""
    from tests.serving import noise_video, tiny_weights

    data = tiny_weights(tmp_path / "t.safetensors").read_bytes()
    video = noise_video(tmp_path / "v.avi", 20)
    out = ["--out", str(tmp_path / "feats")] if command == "extract" else []
    for name, flags in ((f"quiet-{command}", ["--no-progress"]), (f"shown-{command}", [])):
        _entry(server, entries, name, f"{name}.safetensors", data, "native")
        capsys.readouterr()
        assert main([command, "--weights", name, *out, *flags, str(video)]) == 0
        bar = f"{name}.safetensors: {len(data)}/{len(data)} B in"
        assert (bar in capsys.readouterr().err) == (not flags)
        out = ["--out", str(tmp_path / "feats2")] if command == "extract" else []
