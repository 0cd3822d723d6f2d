"""Transforms on known tensors: exact crops, flips, resize sizes and normalisation values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c3dnet.data.transforms import (
    center_crop,
    eval_transform,
    hflip,
    normalize,
    random_crop,
    resize,
    train_transform,
)
from c3dnet.preprocess import CAFFE_PREPROCESS, SEED_PREPROCESS, Preprocess


def _ramp(c=3, t=2, h=6, w=8) -> torch.Tensor:
    return torch.arange(c * t * h * w, dtype=torch.int64).reshape(c, t, h, w).remainder(256).to(torch.uint8)


def test_center_crop_offsets():
    x = _ramp(h=6, w=9)
    out = center_crop(x, 4)
    # (6 - 4) // 2 = 1 rows, (9 - 4) // 2 = 2 columns
    assert torch.equal(out, x[:, :, 1:5, 2:6])
    with pytest.raises(ValueError, match="cannot crop 7x7 from frames of 6x9"):
        center_crop(x, 7)


def test_random_crop_uses_rng_and_covers_positions():
    x = _ramp(h=5, w=5)
    seen = set()
    for s in range(200):
        out = random_crop(x, 3, np.random.default_rng(s))
        rng = np.random.default_rng(s)
        top, left = int(rng.integers(3)), int(rng.integers(3))
        assert torch.equal(out, x[:, :, top : top + 3, left : left + 3])
        seen.add((top, left))
    assert len(seen) == 9


def test_hflip():
    x = _ramp()
    assert torch.equal(hflip(x)[..., 0], x[..., -1])
    assert torch.equal(hflip(hflip(x)), x)


def test_resize_shapes_and_values():
    x = torch.full((3, 2, 240, 320), 77, dtype=torch.uint8)
    out = resize(x, (128, 171))
    assert out.shape == (3, 2, 128, 171) and out.dtype == torch.uint8
    assert bool((out == 77).all())  # a flat image stays flat
    assert resize(out, (128, 171)) is out  # already at size: untouched
    # the reference's resize: OpenCV INTER_LINEAR on uint8, exactly
    import cv2

    img = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    ref = cv2.resize(img, (171, 128), interpolation=cv2.INTER_LINEAR)
    as_tensor = torch.from_numpy(img).permute(2, 0, 1)[:, None]  # (3, 1, 240, 320)
    ours = resize(as_tensor, (128, 171))[:, 0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)
    # float frames: the same half-pixel bilinear rule (OpenCV rounds its fixed-point weights: within 1)
    ours_float = resize(as_tensor.float(), (128, 171))[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(ours_float - ref).max() <= 1
    # antialiasing only on request: then as PIL's antialiased bilinear, within rounding
    from PIL import Image

    pil = np.asarray(Image.fromarray(img).resize((171, 128), Image.BILINEAR)).astype(int)
    smooth = resize(as_tensor, (128, 171), antialias=True)[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(smooth.astype(int) - pil).max() <= 1
    assert np.abs(ours.astype(int) - pil).max() > 20  # the default is not antialiased


def test_resize_is_bilinear_without_antialiasing():
    """Shrinking 8 -> 2 samples at source x = 1.5 and 5.5 (half-pixel centres): two pixels each, not four."""
    row = torch.tensor([0, 10, 20, 30, 40, 50, 60, 70], dtype=torch.uint8).view(1, 1, 1, 8).expand(3, 1, 1, 8)
    out = resize(row.contiguous(), (1, 2))
    assert out[0, 0, 0].tolist() == [15, 55]
    assert resize(row.float(), (1, 2))[0, 0, 0].tolist() == [15.0, 55.0]


def test_normalize_exact_values_rgb_and_bgr():
    x = torch.zeros(2, 3, 1, 1, 1, dtype=torch.uint8)  # (N, C, T, H, W)
    x[:, 0], x[:, 1], x[:, 2] = 10, 20, 30  # R, G, B
    out = normalize(x, SEED_PREPROCESS)
    assert out.dtype == torch.float32
    assert out[0, :, 0, 0, 0].tolist() == [10 - 104, 20 - 117, 30 - 128]
    caffe = normalize(x, CAFFE_PREPROCESS)  # BGR: channel 0 is blue
    assert caffe[1, :, 0, 0, 0].tolist() == pytest.approx([30 - 90.25, 20 - 97.66, 10 - 101.41])
    p = Preprocess(mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    assert normalize(x[0].float(), p)[:, 0, 0, 0].tolist() == [4.5, 4.5, 3.375]  # unbatched float works too
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, T, H, W\)"):
        normalize(torch.zeros(4, 1, 2, 2), p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_normalize_on_gpu():
    x = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    assert torch.equal(normalize(x.cuda(), CAFFE_PREPROCESS).cpu(), normalize(x, CAFFE_PREPROCESS))


def test_presets():
    frames = np.zeros((16, 240, 320, 3), dtype=np.uint8)  # (T, H, W, 3)
    frames[..., 0] = 255  # red
    frames[:, :, :160, 1] = 255  # left half also green
    clip = eval_transform(frames, SEED_PREPROCESS)
    assert clip.shape == (3, 16, 112, 112) and clip.dtype == torch.uint8
    assert bool((clip[0] == 255).all())
    # centre crop of 171 wide: columns 29..140, the green/red boundary at 85.5 -> 56 or 57 columns of green
    assert clip[1, 0, 0, :56].min() == 255 and clip[1, 0, 0, 58:].max() == 0
    flips = 0
    for s in range(20):
        rng = np.random.default_rng(s)
        out = train_transform(frames, SEED_PREPROCESS, rng)
        assert out.shape == (3, 16, 112, 112)
        flips += int(out[1, 0, 0, 0] == 0 and out[1, 0, 0, -1] == 255)
        again = train_transform(frames, SEED_PREPROCESS, np.random.default_rng(s))
        assert torch.equal(out, again)  # deterministic given the generator
    assert 3 <= flips <= 17
    fixed = Preprocess(resize_hw=(128, 171))
    assert eval_transform(np.zeros((4, 128, 171, 3), np.uint8), fixed).shape == (3, 4, 112, 112)
