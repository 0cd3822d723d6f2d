from __future__ import annotations

import numpy as np
import pytest

from c3dnet.data import sampling
from c3dnet.data.sampling import center_clip, sliding_clips, train_clip

# Imported through the module: pytest would collect functions named test_* as tests.


def test_test_clips_seed_formula_ucf_length() -> None:
    # 187 frames: avg = (187 - 16 + 1) / 10 = 17.2, starts int(17.2k + 8.6).
    assert sampling.test_start_frames(187, 16, 10).tolist() == [8, 25, 43, 60, 77, 94, 111, 129, 146, 163]
    clips = sampling.test_clips(187, 16, 10)
    assert clips.shape == (10, 16)
    assert clips[9].tolist() == list(range(163, 179))


@pytest.mark.parametrize("n", list(range(1, 16)))
def test_short_videos_start_at_zero_and_wrap(n: int) -> None:
    clips = sampling.test_clips(n, 16, 10)
    expected = [i % n for i in range(16)]
    assert all(row.tolist() == expected for row in clips)
    assert train_clip(n, 16, np.random.default_rng(0)).tolist() == expected
    assert center_clip(n, 16).tolist() == expected
    assert sliding_clips(n, 16, 16).tolist() == [expected]


@pytest.mark.parametrize("n", [16, 17, 31, 100, 187, 300])
def test_test_starts_match_hand_formula(n: int) -> None:
    avg = (n - 16 + 1) / 10
    assert sampling.test_start_frames(n, 16, 10).tolist() == [int(k * avg + avg / 2) for k in range(10)]
    assert center_clip(n, 16)[0] == int((n - 15) / 2)
    assert sampling.test_clips(n, 16, 10).max() <= n - 1  # never wraps when the video is long enough


def test_train_clip_start_is_uniform_over_valid_range() -> None:
    rng = np.random.default_rng(0)
    starts = [train_clip(20, 16, rng)[0] for _ in range(2000)]
    assert set(starts) == {0, 1, 2, 3, 4}
    counts = np.bincount(starts)
    assert counts.min() > 300  # ~400 each


def test_frame_interval() -> None:
    assert sampling.test_clips(100, 4, 1, frame_interval=2).tolist() == [[46, 48, 50, 52]]  # avg=93, start int(46.5)
    assert train_clip(8, 4, np.random.default_rng(1), frame_interval=2).tolist() == [0, 2, 4, 6]


def test_sliding_starts_follow_stride() -> None:
    assert sliding_clips(48, 16, 16)[:, 0].tolist() == [0, 16, 32]
    assert sliding_clips(47, 16, 16)[:, 0].tolist() == [0, 16]
    assert sliding_clips(20, 16, 2)[:, 0].tolist() == [0, 2, 4]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        sampling.test_clips(0, 16)
    with pytest.raises(ValueError, match="stride"):
        sliding_clips(10, 4, 0)
