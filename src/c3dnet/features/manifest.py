"""The extraction output folder: its layout, per-video manifest entries and the merged manifest.

The layout is described in `c3dnet.features`; a video is done when both its `.npy` and its `.parts/<key>.json`
exist.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from c3dnet.errors import DataError
from c3dnet.fileio import atomic_write_text
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.log import get_logger

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

log = get_logger(__name__)

PARTS_DIR = ".parts"
LOCKS_DIR = ".locks"
MANIFEST = "manifest.jsonl"
FAILED = "failed.txt"
KEYS = "keys.csv"
KEYS_HEADER = ("key", "video")
TMP_TAG = "c3dpart-"
TIMES_SUFFIX = ".times.csv"
TIMES_HEADER = "first_frame,last_frame,start_s,end_s"


@dataclass(frozen=True)
class ManifestEntry:
    """One extracted video: where its features are and which clips they come from.

    `crop_boxes` gives each view's square in the frames resized as the weights say (top, left, size), and whether
    it was mirrored (`flip`): the crops of the mirrored frames are named for their place there ("flip_top_left" is
    the top-right square, mirrored). `dim` is the layer's width; with a PCA the rows have `pca_dim` values.
    """

    key: str
    output: str  # file name inside the output folder
    video: str  # absolute source path
    layer: str
    num_frames: int
    fps: float
    clip_starts: list[int]
    clip_len: int
    frame_interval: int
    stride: int
    video_mean: bool
    l2: str  # "none", "clip" or "output" (features.pooling)
    dim: int
    weights: str = ""
    orientation: str = "none"  # the turn applied to the coded frames ('none', 'transpose=clock', ...)
    segments: int = 0
    segment_rule: str = ""  # with segments: "uniform" or "sultani"
    sample_fps: str = ""  # the --fps the video was sampled at ("" : its own frames); clip_starts count those
    num_sampled_frames: int = 0  # frames after sampling (num_frames without --fps)
    times: str = ""  # the rows' sidecar: first/last source frame and start/end seconds of each row
    crops: str = "center"  # the views of each clip: "center", "5" or "10" (inference.clips.CropSet)
    crop_order: str = ""  # with crops: "tencrop" (torchvision's TenCrop) or "urdmu"
    crop_axis: str = ""  # with crops: "second" (rows, crops, dim) or "first" (crops, rows, dim)
    crop_boxes: list[dict[str, Any]] = field(default_factory=list)  # each view in order: name, top, left, size, flip
    pca_sha256: str = ""  # the PCA file's SHA-256 ("": none)
    pca_dim: int = 0  # the components kept (the rows' width) with a PCA
    pca_file: str = ""  # the PCA file as it was given
    shape: list[int] = field(default_factory=list)  # the .npy's shape (empty in entries written before crops)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def recipe(self) -> FeatureRecipe:
        """What the rows are (the recipe's fields of this entry)."""
        return FeatureRecipe.from_settings(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        d = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if isinstance(d.get("l2"), bool):  # entries written before --l2 took a mode
            d["l2"] = FeatureRecipe.from_settings(d).l2
        return cls(**d)


def read_manifest(out_dir: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Every finished video's entry in an extraction folder (from its per-video parts, so never stale)."""
    out_dir = Path(out_dir)
    parts = sorted((out_dir / PARTS_DIR).glob("*.json"))
    if not parts and (out_dir / MANIFEST).is_file():  # a folder copied without its hidden parts
        lines = (out_dir / MANIFEST).read_text(encoding="utf-8").splitlines()
        return [parse_entry(line, f"{out_dir / MANIFEST}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    return [parse_entry(p.read_text(encoding="utf-8"), str(p)) for p in parts]


def parse_entry(text: str, where: str) -> ManifestEntry:
    """A manifest entry from its JSON text; `DataError` naming `where` (file, or file:line) if it is not one."""
    try:
        return ManifestEntry.from_dict(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{where}: not a c3d extract manifest entry ({e}); re-run `c3d extract` on that video") from e


def format_times(spans: np.ndarray) -> str:
    """The rows' sidecar (`<key>.times.csv`): a header, then per row its first and last source frame (0-based,
    FFmpeg's numbering) and its start and end in seconds from the first frame (empty where unknown)."""
    def sec(x: float) -> str:
        return "" if np.isnan(x) else f"{x:.6f}"

    return "".join([TIMES_HEADER + "\n"] + [f"{int(a)},{int(b)},{sec(t0)},{sec(t1)}\n" for a, b, t0, t1 in spans])


def read_times(path: str | os.PathLike[str]) -> np.ndarray:
    """A times sidecar as (rows, 4) float64 [first_frame, last_frame, start_s, end_s] (NaN where unknown)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != TIMES_HEADER:
        raise DataError(f"{path}: not a c3d extract times file (header {TIMES_HEADER!r} expected)")
    try:
        rows = [[float(v) if v else np.nan for v in line.split(",")] for line in lines[1:]]
    except ValueError as e:
        raise DataError(f"{path}: a malformed row ({e}); re-run `c3d extract` on that video") from e
    if any(len(r) != 4 for r in rows):
        raise DataError(f"{path}: rows of 4 values expected; re-run `c3d extract` on that video")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def load_features(out_dir: str | os.PathLike[str], entry: ManifestEntry) -> np.ndarray:
    return np.load(Path(out_dir) / entry.output, allow_pickle=False)


def output_keys(records: list[VideoRecord]) -> list[str]:
    """File stem per record: the video's name without its extension (a frame folder's name); when several
    inputs share one, each of them gets "-" and the first 8 hex digits of the SHA-1 of its absolute path with
    symlinks resolved (`bikes.mp4` and `bikes.mov` -> `bikes-<8 hex digits>` each). Each clash is logged once
    (INFO), naming every renamed input; `keys.csv` maps every key to its video."""
    stems = [r.path.name if r.path.is_dir() else r.path.stem for r in records]
    clashes: dict[str, list[int]] = {}
    for n, s in enumerate(stems):
        clashes.setdefault(s, []).append(n)
    keys = list(stems)
    for stem, where in clashes.items():
        if len(where) < 2:
            continue
        for n in where:
            keys[n] = f"{stem}-{hashlib.sha1(os.fsencode(records[n].real_path)).hexdigest()[:8]}"
        log.info("%d inputs are named %r: written as %s; keys.csv maps each key to its video", len(where), stem,
                 ", ".join(f"{keys[n]} ({records[n].path})" for n in where))
    return keys


def keys_csv(entries: list[ManifestEntry]) -> str:
    """`keys.csv`: a header `key,video`, then each video's key (its files' stem) and absolute source path."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(KEYS_HEADER)
    writer.writerows((e.key, e.video) for e in entries)
    return text.getvalue()


def write_merged_manifest(out_dir: str | os.PathLike[str]) -> int:
    """(Re)write OUT/manifest.jsonl, OUT/keys.csv and OUT/failed.txt from the per-video parts; returns the entry
    count."""
    out_dir = Path(out_dir)
    entries = read_manifest(out_dir)
    atomic_write_text(out_dir / MANIFEST, "".join(json.dumps(e.to_dict()) + "\n" for e in entries))
    atomic_write_text(out_dir / KEYS, keys_csv(entries))
    failed = []
    for p in (out_dir / PARTS_DIR).glob("*.failed"):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            d = json.loads(p.read_text(encoding="utf-8"))
            failed.append(f"{d['video']}\t{d['error']}\n")
    if failed or (out_dir / FAILED).exists():
        atomic_write_text(out_dir / FAILED, "".join(sorted(failed)))  # by path
    return len(entries)
