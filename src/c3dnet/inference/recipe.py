"""`FeatureRecipe`: what a feature extraction computes, as one validated record.

The CLI (`c3d extract` flags), the API (`c3dnet.extract_features`), the server (`/v1/features` query) and the
extraction manifest all build or read this record, so a setting means the same everywhere and a bad one gets the
same error wherever it was given (named by its `c3d extract` flag: the API's keywords and the server's query
parameters have the same names, with underscores). The rows of a video are its clips' rows (`layer`, every
`stride` frames of the frames sampled at `fps`, seen through the views `crops` says), pooled into `segments` by
`segment_rule` or into their mean (`video_mean`), normalised as `l2` says (`inference.pooling` has the rules), each
crop on its own, then laid out with the crops on `crop_axis` and reduced by a PCA file (`pca`, `pca_dim`) last.

Shapes written for a video of N clips (D: the layer's width, or `pca_dim`; C: 5 or 10 crops; R: N, `segments`):
    centre crop: (R, D), or (D,) with video_mean
    crops:       (R, C, D); (C, R, D) with crop_axis "first"; (C, D) with video_mean

Example:
    >>> FeatureRecipe(layer="fc6", fps="30", segments=32, segment_rule="sultani").l2   # l2 defaults with segments
    'output'
    >>> FeatureRecipe(stride=0)
    Traceback (most recent call last):
    c3dnet.errors.ConfigError: --stride must be a whole number of frames >= 1, got 0
    >>> FeatureRecipe(crops=10, crop_axis="first").shape(7, 4096)
    (10, 7, 4096)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np

from c3dnet.data.timing import parse_fps
from c3dnet.errors import ConfigError
from c3dnet.inference.clips import CROP_COUNTS, CROP_ORDERS, CropSet
from c3dnet.inference.pca import DEFAULT_DIM, PcaProjection
from c3dnet.inference.pooling import L2_MODES, SEGMENT_RULES, pool_rows, row_groups
from c3dnet.preprocess import Preprocess

LAYERS = ("fc6", "fc7", "pool5", "logits")
"""Outputs features are taken from (logits too, for the API)."""

CROPS = tuple(CROP_COUNTS)
"""Views taken of each clip: the centre crop, torchvision's five crops, or its ten (`inference.clips.CropSet`)."""
CROP_AXES = ("second", "first")
"""Where the crops go in a video's array: (T, C, D) (RTFM's, MGFN's) or (C, T, D) (UR-DMU's)."""


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
        crops: the views of each clip: "center", "5" (torchvision's five_crop: the four corners, the centre) or
            "10" (the five, then the same five of the horizontally mirrored frames); 5 and 10 as numbers too.
        crop_order: with crops, "tencrop" (torchvision's TenCrop order, the default) or "urdmu" (top-left,
            top-right, centre, bottom-left, bottom-right).
        crop_axis: with crops, "second" ((T, C, D), the default) or "first" ((C, T, D)).
        pca: a PCA file (ActivityNet's HDF5 layout, or an .npz of the same names) or a loaded `PcaProjection`;
            each written row becomes `(x - x_mean) @ U[:, :pca_dim]`, after pooling and L2.
        pca_dim: the components kept (500 when None, ActivityNet's).
    """

    layer: str = "fc6"
    stride: int = 16
    fps: Fraction | None = None
    video_mean: bool = False
    segments: int = 0
    segment_rule: str = "uniform"
    l2: str | None = None
    crops: str = "center"
    crop_order: str | None = None
    crop_axis: str | None = None
    pca: str | os.PathLike[str] | PcaProjection | None = None
    pca_dim: int | None = None

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
        self._check_crops(put)
        self._check_pca(put)

    def _check_crops(self, put: Any) -> None:
        crops = str(self.crops) if _whole(self.crops) else self.crops
        if crops not in CROPS:
            raise ConfigError(f"--crops must be one of {', '.join(CROPS)}, got {self.crops!r}")
        put("crops", crops)
        for flag, name, allowed in (("--crop-order", "crop_order", tuple(CROP_ORDERS)),
                                    ("--crop-axis", "crop_axis", CROP_AXES)):
            value = getattr(self, name) or allowed[0]
            if value not in allowed:
                raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
            if crops == "center" and value != allowed[0]:
                raise ConfigError(f"{flag} applies to --crops 5 or 10 (the centre crop alone has no crop order or "
                                  "axis)")
            put(name, value)

    def _check_pca(self, put: Any) -> None:
        if self.pca is None:
            if self.pca_dim is not None:
                raise ConfigError("--pca-dim applies with --pca FILE (the PCA file to reduce the rows with)")
            return
        if isinstance(self.pca, PcaProjection):
            if self.pca_dim is not None and self.pca_dim != self.pca.dim:
                raise ConfigError(f"--pca-dim {self.pca_dim} differs from the {self.pca.dim} components the PCA "
                                  "given keeps")
        else:
            put("pca", PcaProjection.load(self.pca, DEFAULT_DIM if self.pca_dim is None else self.pca_dim))
        put("pca_dim", self.pca.dim)

    # ----------------------------------------------------------------------------------------------- rows

    def rows(self, num_clips: int) -> int:
        """How many rows a video of `num_clips` clips gets."""
        return 1 if self.video_mean else self.segments or num_clips

    def groups(self, num_clips: int) -> list[np.ndarray]:
        """The clip numbers behind each written row."""
        return row_groups(num_clips, self.segments, self.segment_rule, self.video_mean)

    @property
    def crop_set(self) -> CropSet:
        """The views of each clip (`inference.clips.CropSet`)."""
        return CropSet(self.crops, self.crop_order)

    @property
    def num_crops(self) -> int:
        return CROP_COUNTS[self.crops]

    def out_dim(self, dim: int) -> int:
        """The width of the written rows, from the layer's `dim`."""
        return self.pca.dim if self.pca is not None else dim

    def shape(self, num_clips: int, dim: int) -> tuple[int, ...]:
        """The shape of a video's written array (see the module docstring), from its clips and the layer's `dim`."""
        rows = () if self.video_mean else (self.rows(num_clips),)
        crops = () if self.crops == "center" else (self.num_crops,)
        lead = crops + rows if self.crop_axis == "first" else rows + crops
        return (*lead, self.out_dim(dim))

    def check_model(self, dim: int, preprocess: Preprocess) -> None:
        """`ConfigError` when the model cannot compute this recipe: a PCA file for rows of another width than the
        layer's `dim`, or crops with weights that subtract Caffe's volume mean (under the centre crop only)."""
        if self.pca is not None:
            self.pca.check_input(dim, self.layer)
        if self.crops != "center" and preprocess.volume_mean is not None:
            raise ConfigError(f"--crops {self.crops}: these weights subtract Caffe's volume mean "
                              f"({preprocess.volume_mean.source}) under the centre crop, which does not hold for the "
                              "other crops; use --crops center, or weights converted without --mean-file")

    def finish(self, clip_rows: np.ndarray) -> np.ndarray:
        """A video's view rows (N * C, D) (clip k's crops at rows k * C ...; C = 1 for the centre crop), as the
        network gives them, as written (`shape`): pooled, normalised, laid out and reduced."""
        rows = np.asarray(clip_rows)
        if self.crops != "center":
            rows = rows.reshape(-1, self.num_crops, rows.shape[-1])  # (N, C, D)
        return self.layout(pool_rows(rows, self.segments, self.segment_rule, self.video_mean, self.l2))

    def layout(self, pooled: np.ndarray) -> np.ndarray:
        """Pooled rows (R, C, D), (R, D), (C, D) or (D,) as written: the crops moved first with crop_axis "first"
        (not with video_mean, where they are already), then reduced by the PCA; float32."""
        if self.crop_axis == "first" and self.crops != "center" and not self.video_mean:
            pooled = np.swapaxes(pooled, 0, 1)  # (C, R, D)
        if self.pca is not None:
            pooled = self.pca.apply(pooled)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    # ----------------------------------------------------------------------------------------------- records

    def settings(self) -> dict[str, Any]:
        """The recipe as the manifest records it (what makes two extractions of a video differ)."""
        crops = self.crops != "center"
        return {"layer": self.layer, "stride": self.stride, "video_mean": self.video_mean, "l2": self.l2,
                "segments": self.segments, "segment_rule": self.segment_rule if self.segments else "",
                "sample_fps": str(self.fps) if self.fps is not None else "", "crops": self.crops,
                "crop_order": self.crop_order if crops else "", "crop_axis": self.crop_axis if crops else "",
                "pca_sha256": self.pca.sha256 if self.pca is not None else "",
                "pca_dim": self.pca.dim if self.pca is not None else 0}

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON answers give it (`sample_fps` null when not given)."""
        d = self.settings()
        d["sample_fps"] = str(self.fps) if self.fps is not None else None
        d["segment_rule"] = self.segment_rule
        d["pca"] = self.pca.to_dict() if self.pca is not None else None
        del d["pca_sha256"], d["pca_dim"]
        return d

    @classmethod
    def from_settings(cls, d: dict[str, Any]) -> FeatureRecipe:
        """The recipe a manifest entry recorded (old entries: "l2" true/false, no segments, fps, crops or PCA); a
        PCA is only recorded (`PcaProjection.recorded`: its file is not read again)."""
        known = {f.name for f in fields(cls)} - {"pca", "pca_dim"}
        values = {k: v for k, v in d.items() if k in known}
        if d.get("sample_fps"):
            values["fps"] = d["sample_fps"]
        for name in ("segment_rule", "crop_order", "crop_axis"):
            values[name] = values.get(name) or None
        values["segment_rule"] = values["segment_rule"] or "uniform"
        if d.get("pca_sha256"):
            values["pca"] = PcaProjection.recorded(d["pca_sha256"], d["pca_dim"], d.get("pca_file", ""))
        return cls(**values)


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
