"""Caffe C3D's volume mean: the strict BlobProto parser, `c3d convert --mean-file`, and the mean subtracted per
pixel after the fixed resize and before the crop (checked against a direct computation on whole frames)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data.resize import resize_frames
from c3dnet.data.transforms import eval_transform, normalize
from c3dnet.errors import WeightsError
from c3dnet.weights import load_model, read_metadata, read_weights
from c3dnet.weights.caffe_mean import parse_blob_proto, read_mean_file
from tests.test_weights import FOREIGN, _model, caffe_state


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire) + (varint(len(payload)) + payload if wire == 2 else payload)


def c3d_blob(values: np.ndarray, packed: bool = True) -> bytes:
    """What the original C3D's Caffe writes: num, channels, length, height, width, then packed floats."""
    n, c, t, h, w = values.shape
    head = b"".join(field(i, 0, varint(v)) for i, v in enumerate((n, c, t, h, w), 1))
    floats = values.astype("<f4")
    if packed:
        return head + field(6, 2, floats.tobytes())
    return head + b"".join(field(6, 5, v.tobytes()) for v in floats.ravel())


def bvlc_blob(values: np.ndarray) -> bytes:
    """BVLC Caffe's layout: data = 5, shape = 7 (BlobShape of int64 dims)."""
    shape = field(1, 2, b"".join(varint(d) for d in values.shape))
    return field(7, 2, shape) + field(5, 2, values.astype("<f4").tobytes())


def _mean(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(60, 130, shape).astype(np.float32)


@pytest.mark.parametrize("layout", ["c3d-packed", "c3d-unpacked", "bvlc"])
def test_both_blob_layouts_parse_to_the_same_values(tmp_path: Path, layout: str) -> None:
    values = _mean((1, 3, 4, 6, 7))
    data = bvlc_blob(values) if layout == "bvlc" else c3d_blob(values, packed=layout == "c3d-packed")
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(data)
    mean = read_mean_file(path)
    assert mean.shape == (3, 4, 6, 7) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, values[0])


def test_the_sports1m_size_parses_quickly(tmp_path: Path) -> None:
    values = _mean((1, 3, 16, 128, 171))
    path = tmp_path / "sport1m_train16_128_mean.binaryproto"
    path.write_bytes(c3d_blob(values))
    assert path.stat().st_size > 4_200_000
    np.testing.assert_array_equal(read_mean_file(path), values[0])


@pytest.mark.parametrize(("mutate", "pattern"), [
    (lambda b: b[:-3], r"a field of [\d,]+ bytes at byte \d+ with only [\d,]+ left"),
    (lambda b: b[:1] + b"\xff" * 11, r"varint longer than 10 bytes|varint cut off"),
    (lambda b: b + field(12, 0, varint(1)), r"field 12 with wire type 0, which a BlobProto does not have"),
    (lambda b: b + bytes([6 << 3 | 3]), r"wire type 3 \(groups"),
    (lambda b: field(1, 0, varint(1)) + b, r"field 1 given twice"),
    (lambda b: b.replace(field(3, 0, varint(4)), field(3, 0, varint(5))), r"values for a blob of shape \(1, 3, 5"),
    (lambda b: b.replace(field(2, 0, varint(3)), field(2, 0, varint(1 << 40))), r"field 2 = 1099511627776"),
    (lambda b: b.replace(field(2, 0, varint(3)), field(2, 0, varint(-1))), r"field 2 = -1"),
])
def test_malformed_blobs_are_refused_naming_the_file_and_offset(tmp_path: Path, mutate, pattern: str) -> None:
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(mutate(c3d_blob(_mean((1, 3, 4, 6, 7)))))
    with pytest.raises(WeightsError, match=f"bad.binaryproto: not a Caffe mean file.*{pattern}"):
        read_mean_file(path)


def test_wrong_shapes_values_and_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.binaryproto"
    path.write_bytes(c3d_blob(_mean((1, 1, 4, 6, 7))))
    with pytest.raises(WeightsError, match=r"shape \(1, 1, 4, 6, 7\); expected 1 x 3 x frames"):
        read_mean_file(path)
    values = _mean((1, 3, 2, 3, 3))
    values[0, 1, 1, 1, 1] = np.nan
    path.write_bytes(c3d_blob(values))
    with pytest.raises(WeightsError, match="NaN or infinite"):
        read_mean_file(path)
    path.write_bytes(pickle.dumps({"mean": 1}))  # not protobuf at all
    with pytest.raises(WeightsError, match="m.binaryproto: not a Caffe mean file"):
        read_mean_file(path)
    with pytest.raises(WeightsError, match="no such mean file"):
        read_mean_file(tmp_path / "missing.binaryproto")
    with pytest.raises(ValueError, match="double-precision"):
        parse_blob_proto(field(8, 2, np.zeros(2).tobytes()))


def _caffe_weights(tmp_path: Path) -> tuple[Path, tuple[int, int, int]]:
    """A tiny Caffe conversion (c3d.pickle layout) and the (frames, height, width) of a mean that fits it."""
    path = tmp_path / "c3d.pickle"
    path.write_bytes(pickle.dumps({k: v.numpy() for k, v in caffe_state(_model(**FOREIGN)).items()}, protocol=2))
    config = read_weights(path).config
    return path, (config.clip_len, config.crop_size + 8, config.crop_size + 18)


def test_convert_stores_the_mean_and_every_consumer_subtracts_it_before_the_crop(tmp_path: Path) -> None:
    src, (frames, height, width) = _caffe_weights(tmp_path)
    values = _mean((1, 3, frames, height, width), seed=3)
    mean_file = tmp_path / "sport1m_train16_128_mean.binaryproto"
    mean_file.write_bytes(c3d_blob(values))
    dst = tmp_path / "c3d_mean.safetensors"
    assert main(["convert", str(src), str(dst), "--mean-file", str(mean_file)]) == 0

    record = read_metadata(dst)["preprocess"]
    assert record["channel_order"] == "BGR" and record["resize_hw"] == [height, width]
    assert record["volume_mean"]["shape"] == [3, frames, height, width]
    assert record["volume_mean"]["source"] == mean_file.name
    np.testing.assert_allclose(record["mean"], values[0].mean(axis=(1, 2, 3)), rtol=1e-6)
    model = load_model(dst)
    pre = model.preprocess
    np.testing.assert_array_equal(pre.volume_mean.values, values[0])

    # Independently: resize whole frames to the mean's size, BGR, subtract the whole volume, then centre-crop.
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8)
    resized = resize_frames(video, (height, width)).astype(np.float32)[..., ::-1]  # (T, H, W, BGR)
    centred = resized - values[0].transpose(1, 2, 3, 0)
    crop = pre.crop_size
    top, left = (height - crop) // 2, (width - crop) // 2
    expected = centred[:, top:top + crop, left:left + crop].transpose(3, 0, 1, 2)  # (3, T, crop, crop)
    got = normalize(eval_transform(video, pre)[None], pre)[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-4)
    # ... and the per-channel path is unchanged: the same record without the volume subtracts `mean` per channel.
    import dataclasses

    flat = dataclasses.replace(pre, volume_mean=None)
    per_channel = normalize(eval_transform(video, flat)[None], flat)[0]
    assert not torch.allclose(per_channel, got)
    with torch.no_grad():  # the model scores what normalize gave it: the mean reaches predict/extract/test
        assert torch.isfinite(model(got[None])).all()


def test_a_mean_that_does_not_fit_the_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, (frames, height, width) = _caffe_weights(tmp_path)
    mean_file = tmp_path / "m.binaryproto"
    out = tmp_path / "out.safetensors"
    mean_file.write_bytes(c3d_blob(_mean((1, 3, frames + 1, height, width))))
    assert main(["convert", str(src), str(out), "--mean-file", str(mean_file)]) == 2
    assert f"--mean-file {mean_file}: does not fit the weights" in capsys.readouterr().err
    mean_file.write_bytes(c3d_blob(_mean((1, 3, frames, 8, 8))))
    assert main(["convert", str(src), str(out), "--mean-file", str(mean_file)]) == 2
    assert "larger than the volume mean's 8x8 frames" in capsys.readouterr().err
    assert not out.exists()


def test_a_native_file_whose_mean_tensor_was_altered_is_refused(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src, (frames, height, width) = _caffe_weights(tmp_path)
    mean_file = tmp_path / "m.binaryproto"
    mean_file.write_bytes(c3d_blob(_mean((1, 3, frames, height, width))))
    dst = tmp_path / "w.safetensors"
    assert main(["convert", str(src), str(dst), "--mean-file", str(mean_file)]) == 0
    with safe_open(str(dst), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(dst))
    tensors["preprocess.volume_mean"][0, 0, 0, 0] += 1.0
    save_file(tensors, str(dst), metadata=metadata)
    with pytest.raises(WeightsError, match="w.safetensors: invalid c3dnet metadata.*not the ones the metadata"):
        read_weights(dst)
    del tensors["preprocess.volume_mean"]
    save_file(tensors, str(dst), metadata=metadata)
    with pytest.raises(WeightsError, match=r"names a volume mean of shape .* tensor is None"):
        read_weights(dst)


def test_extract_and_predict_subtract_the_volume_mean(tmp_path: Path) -> None:
    import c3dnet

    src, (frames, height, width) = _caffe_weights(tmp_path)
    mean_file = tmp_path / "m.binaryproto"
    mean_file.write_bytes(c3d_blob(_mean((1, 3, frames, height, width), seed=5)))
    dst = tmp_path / "w.safetensors"
    assert main(["convert", str(src), str(dst), "--mean-file", str(mean_file)]) == 0
    model = load_model(dst)
    video = np.random.default_rng(2).integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8)  # exactly one clip
    with torch.no_grad():
        expected = model(normalize(eval_transform(video, model.preprocess)[None], model.preprocess))[0]
    rows = c3dnet.extract_features(dst, video, layer="logits", device="cpu", source_fps=25)
    np.testing.assert_allclose(rows[0], expected.numpy(), rtol=1e-4, atol=1e-4)
    record = c3dnet.predict(dst, video, clips=1, top_k=1, device="cpu", source_fps=25)
    assert record["top_k"][0]["index"] == int(expected.argmax())
