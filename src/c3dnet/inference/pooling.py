"""From a video's clip rows to the rows written: every clip, a fixed number of segments, or the video mean.

Segments (`--segments S`) follow one of two rules over the N clip rows:
- "uniform" (default): segment k (0-based) is the mean of clips [b_k, b_{k+1}), b_k = floor(k * N / S + 1/2);
  a segment with no clip (N < S) takes clip min(b_k, N - 1).
- "sultani": the released MATLAB code of Sultani et al. (CVPR 2018, UCF-Crime), exactly: 1-based boundaries
  b = round(linspace(1, N, S + 1)) with MATLAB's rounding (halves away from zero); segment k is the mean of
  clips b_k .. b_{k+1} - 1, or clip b_k alone when that range is empty. The last clip is never used (unless
  N == 1), as in that code.

The settings are checked once, by `inference.recipe.FeatureRecipe`.

With several crops (`--crops 5|10`) a video's clip rows are (N, C, D): every rule pools along the clips (axis 0)
and normalises along the features (the last axis), so each crop is pooled and normalised on its own, exactly as
its rows alone would be.

L2 normalisation (`--l2`): "clip" normalises each clip row before any pooling (the UCF-Crime paper's text),
"output" each written row (after the segment or video mean, as the released code and the C3D paper do; each
clip row when nothing is pooled), "none" leaves rows as the network gives them.

Example:
    >>> [g.tolist() for g in segment_groups(10, 4)]             # b = 0, 3, 5, 8, 10
    [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    >>> [g.tolist() for g in segment_groups(10, 4, "sultani")]  # 1-based b = 1, 3, 6, 8, 10
    [[0, 1], [2, 3, 4], [5, 6], [7, 8]]
    >>> [g.tolist() for g in segment_groups(2, 4)]              # fewer clips than segments
    [[0], [0], [1], [1]]
"""

from __future__ import annotations

import numpy as np

from c3dnet.metrics import l2_normalize

SEGMENT_RULES = ("uniform", "sultani")
L2_MODES = ("none", "clip", "output")


def segment_groups(num_clips: int, segments: int, rule: str = "uniform") -> list[np.ndarray]:
    """Clip numbers (0-based) averaged into each of `segments` rows, by `rule` (see the module docstring)."""
    n, s = num_clips, segments
    if n < 1 or s < 1:
        raise ValueError(f"need at least one clip and one segment, got {n} and {s}")
    k = np.arange(s + 1, dtype=np.int64)
    if rule == "uniform":
        b = (2 * k * n + s) // (2 * s)  # floor(k * n / s + 1/2), in integers
        return [np.arange(b[i], b[i + 1]) if b[i + 1] > b[i] else np.array([min(b[i], n - 1)]) for i in range(s)]
    if rule == "sultani":
        # 1 + k * (n - 1) / s rounded half away from zero (all values are >= 1): floor(x + 1/2), in integers.
        b = 1 + (2 * k * (n - 1) + s) // (2 * s)
        return [np.arange(b[i], b[i + 1]) - 1 if b[i + 1] - 1 >= b[i] else np.array([b[i] - 1]) for i in range(s)]
    raise ValueError(f"rule must be one of {SEGMENT_RULES}, got {rule!r}")


def row_groups(num_clips: int, segments: int, rule: str, video_mean: bool) -> list[np.ndarray]:
    """The clip numbers behind each written row: one clip each, the segments, or all clips (the mean)."""
    if segments:
        return segment_groups(num_clips, segments, rule)
    if video_mean:
        return [np.arange(num_clips)]
    return [np.array([k]) for k in range(num_clips)]


def prepare_clip_row(row: np.ndarray, l2: str) -> np.ndarray:
    """A clip row (D,) (one crop's) as it enters pooling: normalised first with l2="clip"."""
    return l2_normalize(row).astype(np.float32) if l2 == "clip" else row


def mean_row(total: np.ndarray, count: int, l2: str) -> np.ndarray:
    """A video's mean feature (D,), or (C, D) per crop, from the float64 sum of its `count` clip rows (per crop),
    normalised with l2="output"."""
    feats = (total / max(count, 1)).astype(np.float32)
    return l2_normalize(feats).astype(np.float32) if l2 == "output" else feats


def pool_rows(rows: np.ndarray, segments: int, rule: str, video_mean: bool, l2: str) -> np.ndarray:
    """A video's clip rows (N, D), or (N, C, D) with C crops, as the network gives them, pooled as written: float32
    (N, ...), (segments, ...), or with `video_mean` (D,) or (C, D)."""
    rows = np.asarray(rows, dtype=np.float32)
    if l2 == "clip":
        rows = l2_normalize(rows).astype(np.float32)
    if video_mean:
        return mean_row(rows.astype(np.float64).sum(axis=0), len(rows), l2)
    return pool_groups(rows, row_groups(len(rows), segments, rule, False) if segments else None, l2)


def pool_groups(rows: np.ndarray, groups: list[np.ndarray] | None, l2: str) -> np.ndarray:
    """Rows (N, D) or (N, C, D), already normalised with l2="clip", averaged over `groups` of clip numbers (None:
    kept one per clip), then normalised with l2="output"; float32. `rows[g]` is all that is asked of `rows` (a
    `features.writers.RowFile` reads them from disk)."""
    if groups is not None:
        rows = np.stack([np.asarray(rows[g], dtype=np.float64).mean(axis=0) for g in groups]).astype(np.float32)
    return l2_normalize(rows).astype(np.float32) if l2 == "output" else np.asarray(rows, dtype=np.float32)
