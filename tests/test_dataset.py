"""ClipDataset: the right frames per mode, determinism per (seed, epoch, index), workers, skip_bad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from c3dnet.data import sampling
from c3dnet.data.dataset import ClipDataset, worker_init_fn
from c3dnet.data.sources import VideoRecord
from c3dnet.errors import DataError
from c3dnet.preprocess import Preprocess
from tests.media import index_frames, read_index, write_index_video

# 96x96 frames, short side 96 and crop 96: the whole code grid stays visible, so each clip frame names itself
PRE = Preprocess(short_side=96, crop_size=96, clip_len=8)
LENGTHS = [40, 5, 30]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[VideoRecord]:
    root = tmp_path_factory.mktemp("ds")
    recs = [VideoRecord(write_index_video(root / "a.avi", 40, height=96, width=96), 0),
            VideoRecord(write_index_video(root / "b.mp4", 5, codec="libx264", height=96, width=96), 1)]  # < clip
    folder = root / "c"
    folder.mkdir()
    for i, f in enumerate(index_frames(30, 96, 96)):
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.jpg", quality=95)
    recs.append(VideoRecord(folder, 2, 30))
    return recs


def _codes(clip: torch.Tensor) -> list[int]:
    """Frame codes of a clip (3, T, H, W)."""
    return [read_index(f) for f in clip.permute(1, 2, 3, 0).numpy()]


def test_val_and_test_modes_give_the_sampled_frames(videos):
    val = ClipDataset(videos, "val", PRE)
    test = ClipDataset(videos, "test", PRE, num_clips=3)
    for i, rec in enumerate(videos):
        n = LENGTHS[i]
        clips, label, idx = val[i]
        assert clips.shape == (1, 3, 8, 96, 96) and clips.dtype == torch.uint8 and (label, idx) == (rec.label, i)
        assert _codes(clips[0]) == sampling.center_clip(n, 8).tolist()
        clips, _, _ = test[i]
        assert clips.shape == (3, 3, 8, 96, 96)
        expected = sampling.test_clips(n, 8, 3)
        assert [_codes(c) for c in clips] == expected.tolist()


def test_train_determinism_and_epochs(videos):
    ds = ClipDataset(videos, "train", PRE, seed=7)
    a = [ds[i][0] for i in range(3)]
    assert all(torch.equal(x, ds[i][0]) for i, x in enumerate(a))  # same (seed, epoch, i): same sample
    # the clip start is the first draw of default_rng([seed, epoch, i])
    for i, n in enumerate(LENGTHS):
        start = sampling.train_clip(n, 8, np.random.default_rng([7, 0, i]))
        codes = _codes(a[i][0])
        flipped = _codes(a[i][0].flip(-1))
        assert start.tolist() in (codes, flipped)  # a horizontal flip mirrors the code grid
    ds.set_epoch(1)
    b = [ds[i][0] for i in range(3)]
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], a[0])


def test_workers_do_not_change_samples(videos):
    ds = ClipDataset(videos, "train", PRE, seed=3)
    kw = dict(batch_size=2, shuffle=False, worker_init_fn=worker_init_fn)
    single = list(DataLoader(ds, num_workers=0, **kw))
    multi = list(DataLoader(ds, num_workers=2, **kw))
    for (x0, y0, i0), (x1, y1, i1) in zip(single, multi, strict=True):
        assert x0.shape[1:] == (1, 3, 8, 96, 96)
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)


def test_resize_follows_preprocess(videos):
    pre = Preprocess(short_side=48, crop_size=48, clip_len=4)  # 96x96 -> 48x48, in the decoder or by PIL/torch
    for rec in (videos[0], videos[2]):
        clips, _, _ = ClipDataset([rec], "val", pre)[0]
        assert clips.shape == (1, 3, 4, 48, 48)
        assert _codes(clips[0]) == sampling.center_clip(rec.num_frames or 40, 4).tolist()


def test_bad_video(tmp_path, videos):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 1000)
    recs = [videos[0], VideoRecord(bad, 1), videos[2]]
    with pytest.raises(DataError, match=r"bad\.avi"):
        ClipDataset(recs, "val", PRE)[1]
    ds = ClipDataset(recs, "val", PRE, skip_bad=True)
    clips, label, idx = ds[1]
    assert (label, idx) == (2, 2)  # the next readable video, under its own index
    assert list(ds.failed) == [1] and "bad.avi" in ds.failed[1]


def test_bad_arguments(videos):
    with pytest.raises(ValueError, match="mode must be one of"):
        ClipDataset(videos, "eval", PRE)
    with pytest.raises(IndexError):
        ClipDataset(videos, "val", PRE)[3]


def test_distributed_sampler_shards_match_one_process(videos):
    from torch.utils.data.distributed import DistributedSampler

    ds = ClipDataset(videos, "train", PRE, seed=5)
    ds.set_epoch(2)
    whole = {i: ds[i][0] for i in range(len(ds))}
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(2)
        for x, _, idx in DataLoader(ds, batch_size=1, sampler=sampler):
            assert torch.equal(x[0], whole[int(idx)])  # a sample does not depend on the rank that loads it
            seen.append(int(idx))
    assert sorted(set(seen)) == [0, 1, 2] and len(seen) == 4  # 3 videos padded to 2 x 2
