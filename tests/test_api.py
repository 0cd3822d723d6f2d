"""The notebook API: `c3dnet.predict` and `c3dnet.extract_features` against what the commands write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import c3dnet
from c3dnet.cli import main
from c3dnet.data.decode import read_frames
from c3dnet.data.encode import write_video
from c3dnet.export import export_onnx
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
NAMES = ["walk", "run", "jump", "swim", "climb"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model's weights, a 45-frame video, and the same frames as a PNG folder and as an array."""
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(3)
    model = C3D(tiny_config(), preprocess=PRE, class_names=NAMES).eval()
    with torch.no_grad():  # a head with visible preferences, so the probabilities are not all about 1/5
        model.head.weight.mul_(50)
    save_model(model, root / "w.safetensors")
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (45, 6, 8, 3), dtype=np.uint8)
    video = root / "v.avi"
    write_video(video, np.repeat(np.repeat(base, 8, axis=1), 8, axis=2))  # (45, 48, 64, 3)
    frames = read_frames(video, np.arange(45))  # the decoded frames, kept losslessly below
    folder = root / "v_frames"
    folder.mkdir()
    for i, f in enumerate(frames):  # PNG data under the folder's .jpg names: read back exactly (PIL reads by content)
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.jpg", format="PNG")
    return root, video, folder, frames


def test_predict_is_what_c3d_predict_prints(setup, capsys):
    root, video, _, _ = setup
    assert main(["predict", "--weights", str(root / "w.safetensors"), str(video), "--json", "--top-k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert c3dnet.predict(root / "w.safetensors", video, top_k=3, device="cpu") == printed[0]
    by_prob = c3dnet.predict(root / "w.safetensors", video, top_k=5, average="prob", device="cpu")
    assert by_prob["top_k"] != printed[0]["top_k"] and len(by_prob["top_k"]) == 5


def test_predict_takes_frames_in_memory(setup):
    root, _, folder, frames = setup
    model = c3dnet.load_model(root / "w.safetensors")
    from_array = c3dnet.predict(model, frames, device="cpu")
    from_folder = c3dnet.predict(model, folder, device="cpu")  # the same pixels, stored losslessly
    assert from_array["video"] == "<frames>"
    assert [c["index"] for c in from_array["top_k"]] == [c["index"] for c in from_folder["top_k"]]
    np.testing.assert_allclose([c["prob"] for c in from_array["top_k"]], [c["prob"] for c in from_folder["top_k"]],
                               rtol=1e-6)


@pytest.mark.parametrize("flags", [(), ("--video-mean", "--l2", "output"), ("--l2", "output")],
                         ids=["rows", "mean-l2", "l2"])
def test_extract_features_are_the_c3d_extract_rows(setup, flags):
    root, video, _, _ = setup
    out = root / ("out" + "".join(flags).replace("-", "_"))
    assert main(["extract", "--weights", str(root / "w.safetensors"), "--out", str(out), "--stride", "8",
                 "--layer", "fc7", "--no-progress", *flags, str(video)]) == 0
    written = np.load(out / "v.npy")
    ours = c3dnet.extract_features(root / "w.safetensors", video, layer="fc7", stride=8, device="cpu",
                                   video_mean="--video-mean" in flags, l2="--l2" in flags)
    assert ours.dtype == np.float32 and ours.shape == written.shape == ((32,) if "--video-mean" in flags else (5, 32))
    # float32 rounding at the rows' scale: the extraction's clips reach the model in another memory layout
    # (views of channels-last decoder buffers), which oneDNN may convolve with another algorithm
    np.testing.assert_allclose(ours, written, rtol=1e-5, atol=1e-6 * np.abs(written).max())


def test_extract_features_from_frames_and_onnx(setup):
    root, _, folder, frames = setup
    model = c3dnet.load_model(root / "w.safetensors")
    from_array = c3dnet.extract_features(model, frames, stride=16, device="cpu")
    np.testing.assert_array_equal(from_array, c3dnet.extract_features(model, folder, stride=16, device="cpu"))
    assert from_array.shape == (3, 32)  # clips at 0, 16, 32 of 45 frames
    export_onnx(model, root / "m.onnx")
    from_onnx = c3dnet.extract_features(root / "m.onnx", frames, stride=16)
    np.testing.assert_allclose(from_onnx, from_array, rtol=1e-4, atol=1e-4)
    assert c3dnet.predict(root / "m.onnx", frames)["top_k"][0]["index"] == \
        c3dnet.predict(model, frames, device="cpu")["top_k"][0]["index"]
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        c3dnet.extract_features(model, frames.astype(np.float32), device="cpu")
