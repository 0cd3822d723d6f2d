"""The reference's test tensor, rebuilt independently from its formulas, against what `c3d test` builds.

The seed reads `img_00001.jpg`, ... with `cv2.imdecode`, converts BGR -> RGB, resizes with
`cv2.resize(img, (171, 128), interpolation=cv2.INTER_LINEAR)`, takes 10 clips of 16 frames starting at
`int(k * avg + avg / 2)` with `avg = (frames - 16 + 1) / 10`, centre-crops 112 (offsets rounded down, mmcv's
CenterCrop) and subtracts the mean (104, 117, 128) from RGB (`../shared/REFERENCE.md`). The frames here are JPEGs
written by the FFmpeg command-line tool, not by c3dnet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.data.dataset import ClipDataset
from c3dnet.data.sources import load_source
from c3dnet.data.transforms import normalize
from c3dnet.preprocess import SEED_PREPROCESS
from tests.oracle import require

FRAMES = 47  # not a multiple of anything the formulas use: avg = 3.2


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory) -> Path:
    """A frame folder of 320x240 JPEGs from FFmpeg's test source, and an mmaction2-style list pointing at it."""
    ffmpeg = require("ffmpeg")
    root = tmp_path_factory.mktemp("seed")
    folder = root / "v_Test_g01_c01"
    folder.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v",
                    str(FRAMES), "-q:v", "3", str(folder / "img_%05d.jpg")], check=True)
    (root / "test.txt").write_text(f"{folder.name} {FRAMES} 0\n")
    return root


def seed_test_tensor(folder: Path, num_frames: int) -> np.ndarray:
    """(10, 3, 16, 112, 112) float32: the seed's test clips, written out from its formulas with OpenCV."""
    import cv2

    def frame(i: int) -> np.ndarray:
        bgr = cv2.imdecode(np.fromfile(folder / f"img_{i + 1:05d}.jpg", dtype=np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, (171, 128), interpolation=cv2.INTER_LINEAR)

    avg = (num_frames - 16 + 1) / 10
    clips = []
    for k in range(10):
        start = int(k * avg + avg / 2)
        clip = np.stack([frame(start + t) for t in range(16)]).astype(np.float32)  # (16, 128, 171, 3)
        top, left = (128 - 112) // 2, (171 - 112) // 2
        clip = clip[:, top:top + 112, left:left + 112] - np.array([104, 117, 128], np.float32)
        clips.append(clip.transpose(3, 0, 1, 2))  # (3, 16, 112, 112)
    return np.stack(clips)


def test_c3d_test_builds_the_seeds_tensor(jpeg_dataset):
    source = load_source(jpeg_dataset / "test.txt", "test")
    assert len(source.records) == 1 and source.records[0].num_frames == FRAMES
    dataset = ClipDataset(source.records, "test", SEED_PREPROCESS, num_clips=10)
    clips, label, index = dataset[0]  # uint8 (10, 3, 16, 112, 112), as the test loader batches them
    ours = normalize(clips, SEED_PREPROCESS).numpy()
    ref = seed_test_tensor(source.records[0].path, FRAMES)
    assert ours.shape == ref.shape == (10, 3, 16, 112, 112)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1.0, f"max {diff.max()}, mean {diff.mean():.4f}"
    assert diff.max() == 0.0  # in fact the same OpenCV calls: identical


def test_antialiased_resize_would_differ(jpeg_dataset):
    """The check above has teeth: the old default (antialiased bilinear) misses the seed's pixels by far."""
    from c3dnet.data.transforms import resize

    folder = load_source(jpeg_dataset / "test.txt", "test").records[0].path
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(folder / "img_00001.jpg")), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[:, None]  # (3, 1, 240, 320)
    seed = cv2.resize(rgb, (171, 128), interpolation=cv2.INTER_LINEAR)
    ours = resize(x, (128, 171))[:, 0].permute(1, 2, 0).numpy()
    smooth = resize(x, (128, 171), antialias=True)[:, 0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, seed)
    assert np.abs(smooth.astype(int) - seed).max() > 10
