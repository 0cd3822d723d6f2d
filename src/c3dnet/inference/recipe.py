"""`FeatureRecipe`: what a feature extraction computes, as one validated record.

The CLI (`c3d extract` flags), the API (`c3dnet.extract_features`), the server (`/v1/features` query) and the
extraction manifest all build or read this record, so a setting means the same everywhere and a bad one gets the
same error wherever it was given (named by its `c3d extract` flag: the API's keywords and the server's query
parameters have the same names, with underscores). The rows of a video are its clips' rows (`layer`, every
`stride` frames of the frames sampled at `fps`), pooled into `segments` by `segment_rule` or into their mean
(`video_mean`), normalised as `l2` says (`inference.pooling` has the rules).

Example:
    >>> FeatureRecipe(layer="fc6", fps="30", segments=32, segment_rule="sultani").l2   # l2 defaults with segments
    'output'
    >>> FeatureRecipe(stride=0)
    Traceback (most recent call last):
    c3dnet.errors.ConfigError: --stride must be a whole number of frames >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np

from c3dnet.data.timing import parse_fps
from c3dnet.errors import ConfigError
from c3dnet.inference.pooling import L2_MODES, SEGMENT_RULES, pool_rows, row_groups

LAYERS = ("fc6", "fc7", "pool5", "logits")
"""Outputs features are taken from (logits too, for the API)."""

CROPS = ("center",)
"""Views taken of each clip: the centre crop."""


@dataclass(frozen=True)
class FeatureRecipe:
    """What each video's feature rows are.

    Attributes:
        layer: "fc6" (the paper's), "fc7", "pool5" or "logits".
        stride: frames between clip starts (16: non-overlapping clips).
        fps: sample each video at this rate by presentation time first (None: its own frames); "30", 29.97 and
            "30000/1001" are taken.
        video_mean: one row, the mean of the clips.
        segments: this many rows, each the mean of its clips (0: one row per clip).
        segment_rule: "uniform" or "sultani" (UCF-Crime's released code).
        l2: "none", "clip" (each clip row, before pooling) or "output" (each written row); None when built:
            "output" with segments, else "none"; True/False (the old boolean): "output"/"none".
        crops: the views of each clip ("center").
    """

    layer: str = "fc6"
    stride: int = 16
    fps: Fraction | None = None
    video_mean: bool = False
    segments: int = 0
    segment_rule: str = "uniform"
    l2: str | None = None
    crops: str = "center"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.layer not in LAYERS:
            raise ConfigError(f"--layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
        if not _whole(self.stride) or self.stride < 1:
            raise ConfigError(f"--stride must be a whole number of frames >= 1, got {self.stride!r}")
        if self.fps is not None:
            put("fps", parse_fps(self.fps, "--fps"))
        if self.segments is None:
            put("segments", 0)
        if not _whole(self.segments) or self.segments < 0:
            raise ConfigError(f"--segments must be a number of segments >= 1 (0 or absent: one row per clip), got "
                              f"{self.segments!r}")
        if self.segment_rule not in SEGMENT_RULES:
            raise ConfigError(f"--segment-rule must be one of {', '.join(SEGMENT_RULES)}, got {self.segment_rule!r}")
        if self.l2 is None or isinstance(self.l2, bool):
            put("l2", ("output" if self.l2 else "none") if isinstance(self.l2, bool) else
                ("output" if self.segments else "none"))
        if self.l2 not in L2_MODES:
            raise ConfigError(f"--l2 must be one of {', '.join(L2_MODES)}, got {self.l2!r}")
        if self.segments and self.video_mean:
            raise ConfigError("--segments and --video-mean both pool the clip rows: choose one (--segments 1 is the "
                              "video mean)")
        if self.crops not in CROPS:
            raise ConfigError(f"--crops must be one of {', '.join(CROPS)}, got {self.crops!r}")

    # ----------------------------------------------------------------------------------------------- rows

    def rows(self, num_clips: int) -> int:
        """How many rows a video of `num_clips` clips gets."""
        return 1 if self.video_mean else self.segments or num_clips

    def groups(self, num_clips: int) -> list[np.ndarray]:
        """The clip numbers behind each written row."""
        return row_groups(num_clips, self.segments, self.segment_rule, self.video_mean)

    def finish(self, clip_rows: np.ndarray) -> np.ndarray:
        """A video's clip rows (N, D), as the network gives them, as written: float32 (N, D), (segments, D), or
        (D,) with `video_mean`."""
        return pool_rows(clip_rows, self.segments, self.segment_rule, self.video_mean, self.l2)

    # ----------------------------------------------------------------------------------------------- records

    def settings(self) -> dict[str, Any]:
        """The recipe as the manifest records it (what makes two extractions of a video differ)."""
        return {"layer": self.layer, "stride": self.stride, "video_mean": self.video_mean, "l2": self.l2,
                "segments": self.segments, "segment_rule": self.segment_rule if self.segments else "",
                "sample_fps": str(self.fps) if self.fps is not None else ""}

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON answers give it (`sample_fps` null when not given)."""
        d = self.settings()
        d["sample_fps"] = str(self.fps) if self.fps is not None else None
        d["segment_rule"] = self.segment_rule
        return d

    @classmethod
    def from_settings(cls, d: dict[str, Any]) -> FeatureRecipe:
        """The recipe a manifest entry recorded (old entries: "l2" true/false, no segments or fps)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if d.get("sample_fps"):
            values["fps"] = d["sample_fps"]
        if not values.get("segment_rule"):
            values["segment_rule"] = "uniform"
        return cls(**values)


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
