"""`c3d predict`: 10-clip average as `c3d test` computes it, JSON schema, timelines, ONNX parity, short videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data.dataset import ClipDataset
from c3dnet.data.encode import write_video
from c3dnet.data.sources import VideoRecord
from c3dnet.data.transforms import normalize
from c3dnet.export import OnnxC3D, export_onnx
from c3dnet.features import ClipRunner
from c3dnet.inference.prediction import predict_timeline, predict_video, softmax
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
NAMES = ["walk", "run", "jump", "swim", "climb"]


def _video(path, n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    write_video(path, np.repeat(np.repeat(base, 8, axis=1), 8, axis=2))  # (n, 48, 64, 3)
    return path


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = C3D(tiny_config(), preprocess=PRE, class_names=NAMES).eval()
    with torch.no_grad():  # a head with visible preferences, so the probabilities are not all about 1/5
        m.head.weight.mul_(50)
    return m


@pytest.mark.parametrize("num_frames", [5, 47])
def test_prediction_equals_the_test_protocol(tmp_path, model, num_frames):
    path = _video(tmp_path / "v.avi", num_frames)
    p = predict_video(ClipRunner(model, "logits"), path, NAMES, num_clips=10)
    clips, _, _ = ClipDataset([VideoRecord(path, 0)], "test", PRE, num_clips=10)[0]  # what `c3d test` scores
    with torch.inference_mode():
        logits = model(normalize(clips, PRE)).numpy()  # (10, 5)
    np.testing.assert_allclose(p.probs, softmax(logits.mean(0)), rtol=1e-5, atol=1e-6)
    assert p.probs.sum() == pytest.approx(1.0) and p.num_frames == num_frames and len(p.clip_starts) == 10
    by_prob = predict_video(ClipRunner(model, "logits"), path, NAMES, num_clips=10, average="prob")
    np.testing.assert_allclose(by_prob.probs, softmax(logits, axis=1).mean(0), rtol=1e-5, atol=1e-6)
    assert by_prob.probs.sum() == pytest.approx(1.0)
    top = p.top_k(3)
    assert [c.prob for c in top] == sorted(p.probs, reverse=True)[:3]
    assert [c.label for c in top] == [NAMES[c.index] for c in top]


def test_predict_cli_json_schema_and_timeline(tmp_path, model, capsys):
    save_model(model, tmp_path / "w.safetensors")
    videos = [_video(tmp_path / "a.avi", 40, 1), _video(tmp_path / "b.avi", 6, 2)]
    rc = main(["predict", "--weights", str(tmp_path / "w.safetensors"), "--top-k", "3", "--json", "--timeline",
               str(tmp_path / "tl"), "--stride", "8", *map(str, videos)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [d["video"] for d in printed] == [str(v) for v in videos]
    for d in printed:
        assert set(d) == {"video", "top_k"} and len(d["top_k"]) == 3
        assert all(set(c) == {"label", "index", "prob"} and c["label"] == NAMES[c["index"]] for c in d["top_k"])
        probs = [c["prob"] for c in d["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    expected = predict_video(ClipRunner(model, "logits"), videos[0], NAMES)
    assert printed[0]["top_k"][0]["prob"] == pytest.approx(float(expected.probs.max()), rel=1e-5)
    timeline = json.loads((tmp_path / "tl" / "a.timeline.json").read_text())
    assert [c["start_frame"] for c in timeline["clips"]] == [0, 8, 16, 24, 32]
    assert timeline["clips"][1]["end_frame"] == 15 and timeline["clips"][1]["time_s"] == pytest.approx(8 / 25)
    assert (tmp_path / "tl" / "a.timeline.png").read_bytes()[:4] == b"\x89PNG"
    short = json.loads((tmp_path / "tl" / "b.timeline.json").read_text())
    assert [c["start_frame"] for c in short["clips"]] == [0] and short["clips"][0]["end_frame"] == 5
    # The timeline's per-clip probabilities are the model's on those clips.
    tl = predict_timeline(ClipRunner(model, "logits"), videos[0], NAMES, stride=8)
    assert tl.probs.shape == (5, 5)
    assert timeline["clips"][2]["top_k"][0]["prob"] == pytest.approx(float(tl.probs[2].max()), rel=1e-5)


def test_onnx_predict_matches_pytorch(tmp_path, model, capsys):
    path = _video(tmp_path / "v.avi", 30)
    export_onnx(model, tmp_path / "m.onnx")
    torch_p = predict_video(ClipRunner(model, "logits"), path, NAMES)
    onnx_p = predict_video(ClipRunner(OnnxC3D(tmp_path / "m.onnx"), "logits"), path, NAMES)
    np.testing.assert_allclose(onnx_p.probs, torch_p.probs, atol=1e-5)
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: {NAMES[int(torch_p.probs.argmax())]} ")


def test_unreadable_video(tmp_path, model, capsys):
    save_model(model, tmp_path / "w.safetensors")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    good = _video(tmp_path / "good.avi", 20)
    assert main(["predict", "--weights", str(tmp_path / "w.safetensors"), str(bad), str(good)]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert main(["predict", "--weights", str(tmp_path / "w.safetensors"), "--skip-bad", str(bad), str(good)]) == 0
    captured = capsys.readouterr()
    assert "bad.mp4" in captured.err and captured.out.startswith(str(good))
