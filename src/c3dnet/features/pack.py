"""`c3d pack`: an extraction folder's finished per-video features in the forms downstream code reads.

- "h5": one HDF5 file; the features of video `key` are the dataset `key` (rows, dim), or `key/NAME` with
  `dataset_name` (ActivityNet's C3D features use `v_xxx/c3d_features`); each dataset's attributes hold its rows'
  `frames` (rows, 2: first and last source frame) and `times` (rows, 2: start and end seconds), and the file's
  attributes the extraction settings.
- "txt": a folder of `<key>_C.txt`, the UCF-Crime form of Sultani et al.: each row's values printed with `%f`,
  each followed by a space, one row per line (as their MATLAB code's `fprintf(fid, '%f ', row)`).
- "pt": a folder of `<key>.pt`, each a float32 tensor (rows, dim) saved by `torch.save`.
- "npy": a folder of `<key>.npy` (what `c3d extract` wrote, with the folder's index).

Features of several crops (`c3d extract --crops 5|10`) keep their shape, (rows, crops, dim) or (crops, rows, dim)
(`--crop-axis first`): in HDF5 each dataset has it, with the attributes `crop_names` (each crop's name, in order)
and `crop_boxes` ((crops, 4): top, left, size, flipped), and the file's attributes hold `crop_order` and
`crop_axis`. `split_crops` writes one file per crop instead, `<key>_<k>.npy`, `<key>_<k>_C.txt` or
`<key>_<k>.pt` (k = 0 ... crops - 1, in the recorded order), each (rows, dim). `pca` reduces every row with a PCA
file, as `c3d extract --pca` would have (`inference.pca`).

Folders also get `index.json` (settings, and each video's file, frames and times) and `keys.csv` (each key and its
source video, as `c3d extract` writes it); in the HDF5 file, each video's dataset (and its group, with
`dataset_name`) has the attribute `video`, its source path, and the root holds nothing but videos. The per-video
`.npy` files stay the resumable store; packing reads only finished videos and replaces `--to` whole (written beside
it, then renamed), so it can be rerun at any time. Features extracted with different settings are refused.

Example:
    >>> pack("feats", "feats.h5")                                    # doctest: +SKIP
    PackSummary(videos=1900, path=PosixPath('feats.h5'), format='h5')
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from c3dnet.errors import ConfigError, DataError
from c3dnet.features.manifest import KEYS, ManifestEntry, keys_csv, load_features, read_manifest, read_times
from c3dnet.fileio import atomic_path, atomic_write_text, output_error
from c3dnet.inference.pca import PcaProjection

FORMATS = ("h5", "txt", "pt", "npy")
INDEX = "index.json"
SETTINGS = ("layer", "dim", "clip_len", "frame_interval", "stride", "video_mean", "l2", "segments", "segment_rule",
            "sample_fps", "weights", "crops", "crop_order", "crop_axis", "pca_sha256", "pca_dim")
"""What must agree between the videos packed together."""
Video = tuple[ManifestEntry, np.ndarray, "np.ndarray | None"]  # an entry, its rows, its spans (or None)


@dataclass(frozen=True)
class PackSummary:
    videos: int
    path: Path
    format: str


def pack_format(to: str | os.PathLike[str], fmt: str | None) -> str:
    """The format asked for, or the one `to`'s extension names (.h5/.hdf5; .pt; a folder or .txt: txt)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(to).suffix.lower()  # (npy only by --format: a folder of .npy files has no extension of its own)
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".pt":
        return "pt"
    if suffix in ("", ".txt"):
        return "txt"
    raise ConfigError(f"{to}: cannot tell the format from the extension {suffix!r}; name it .h5, or give --format "
                      f"({', '.join(FORMATS)})")


def settings_of(entry: ManifestEntry) -> dict[str, Any]:
    d = entry.to_dict()
    return {k: d[k] for k in SETTINGS}


def check_one_setting(entries: list[ManifestEntry], where: Path) -> dict[str, Any]:
    """The settings all `entries` share; `DataError` naming two videos and what differs otherwise."""
    first = settings_of(entries[0])
    for e in entries[1:]:
        other = settings_of(e)
        differ = {k: (first[k], other[k]) for k in SETTINGS if first[k] != other[k]}
        if differ:
            what = "; ".join(f"{k}: {a!r} for {entries[0].key}, {b!r} for {e.key}" for k, (a, b) in differ.items())
            raise DataError(f"{where}: holds features extracted with two different settings ({what}); pack each "
                            "setting from its own --out folder")
    return first


def pack(features_dir: str | os.PathLike[str], to: str | os.PathLike[str], fmt: str | None = None,
         dataset_name: str | None = None, split_crops: bool = False, pca: str | os.PathLike[str] | None = None,
         pca_dim: int | None = None) -> PackSummary:
    """Write every finished video of `features_dir` to `to` in `fmt` (see the module docstring): one file per
    crop with `split_crops`, every row reduced by the PCA file `pca` (keeping `pca_dim` components, 500 if None).
    """
    src, to = Path(features_dir), Path(to)
    fmt = pack_format(to, fmt)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; give the --out folder of `c3d extract`")
    entries = read_manifest(src)
    if not entries:
        raise DataError(f"{src}: no finished videos (no manifest parts); run `c3d extract --out {src} ...` first")
    if dataset_name is not None and (fmt != "h5" or not dataset_name or "/" in dataset_name):
        raise ConfigError("--dataset-name applies to .h5 output and must be a plain name like c3d_features")
    settings = check_one_setting(entries, src)
    _check_crops(src, settings, fmt, split_crops)
    projection = _projection(src, entries[0], settings, pca, pca_dim)
    times = [_times_path(src, e) for e in entries]  # a missing sidecar is an error before anything is written
    videos = ((e, _reduced(load_features(src, e), projection), read_times(t) if t else None)  # one at a time
              for e, t in zip(entries, times))
    needed = sum(_features_size(src, e) for e in entries)  # about what the pack takes
    try:
        if fmt == "h5":
            _write_h5(to, videos, settings, dataset_name)
        else:
            _write_folder(to, videos, settings, fmt, keys_csv(entries), split_crops)
    except OSError as e:
        raise output_error(e, to.parent, f"the pack {to.name}", needed, "choose another --to") from e
    return PackSummary(len(entries), to, fmt)


def _check_crops(src: Path, settings: dict[str, Any], fmt: str, split: bool) -> None:
    """`ConfigError` for crop layouts a format cannot hold, or a split of features that have no crops."""
    crops = settings["crops"] != "center"
    if split and not crops:
        raise ConfigError(f"{src}: --split-crops needs features extracted with --crops 5 or 10; these are of the "
                          "centre crop alone (one file per video already)")
    if split and fmt == "h5":
        raise ConfigError("--split-crops writes one file per crop: pack to a folder (--format npy, txt or pt); an "
                          ".h5 keeps the crops in each video's dataset")
    if crops and fmt == "txt" and not split:
        raise ConfigError(f"{src}: holds {settings['crops']} crops per row, and a .txt file holds 2-D rows: add "
                          "--split-crops for one <video>_<k>_C.txt per crop, or pack to .h5, npy or pt")


def _projection(src: Path, entry: ManifestEntry, settings: dict[str, Any], pca: str | os.PathLike[str] | None,
                pca_dim: int | None) -> PcaProjection | None:
    """The PCA to apply (checked against the features' layer and width), recorded in `settings`."""
    if pca is None and pca_dim is None:
        return None
    if settings["pca_sha256"]:
        raise ConfigError(f"{src}: its features were reduced by a PCA already (SHA-256 {settings['pca_sha256']}, "
                          f"{settings['pca_dim']} dimensions); pack them without --pca, or extract again without it")
    projection = dataclasses.replace(entry.recipe, pca=pca, pca_dim=pca_dim).pca  # the flags' checks and wording
    projection.check_input(settings["dim"], settings["layer"])
    settings.update(pca_sha256=projection.sha256, pca_dim=projection.dim, pca_file=projection.source)
    return projection


def _reduced(feats: np.ndarray, projection: PcaProjection | None) -> np.ndarray:
    return feats if projection is None else projection.apply(feats)


def crop_rows(feats: np.ndarray, settings: dict[str, Any], k: int) -> np.ndarray:
    """Crop `k`'s rows (rows, dim), or (dim,) with the video mean, of a video's features with crops."""
    by_row = settings["crop_axis"] == "second" and not settings["video_mean"]  # (rows, crops, dim)
    return feats[:, k] if by_row else feats[k]


def _features_size(src: Path, entry: ManifestEntry) -> int:
    try:
        return (src / entry.output).stat().st_size
    except OSError as e:
        raise DataError(f"{src / entry.output}: {e.strerror or e}; re-run `c3d extract` on {entry.video}") from e


def _times_path(src: Path, entry: ManifestEntry) -> Path | None:
    if not entry.times:
        return None  # extracted before rows had times
    path = src / entry.times
    if not path.is_file():
        raise DataError(f"{path}: missing; re-run `c3d extract` on {entry.video} (remove {src / entry.output} first)")
    return path


def _write_h5(to: Path, videos: Iterator[Video], settings: dict[str, Any], dataset_name: str | None) -> None:
    try:
        import h5py
    except ImportError as e:
        raise ConfigError("HDF5 output needs h5py: pip install 'c3dnet[h5]' (or pip install h5py)") from e
    if to.is_dir():
        raise ConfigError(f"{to}: is a folder; give a file name ending in .h5")
    with atomic_path(to, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in settings.items():
                f.attrs[k] = v
            for entry, feats, times in videos:
                node = f.create_group(entry.key) if dataset_name else f
                ds = node.create_dataset(dataset_name or entry.key, data=np.atleast_2d(feats))
                if entry.crops != "center":
                    ds.attrs["crop_names"] = [box["name"] for box in entry.crop_boxes]
                    ds.attrs["crop_boxes"] = np.array([[b["top"], b["left"], b["size"], int(b["flip"])]
                                                       for b in entry.crop_boxes], dtype=np.int64).reshape(-1, 4)
                if times is not None:
                    ds.attrs["frames"] = times[:, :2].astype(np.int64)
                    ds.attrs["times"] = times[:, 2:]
                ds.attrs["video"] = entry.video  # keys.csv's mapping, where an HDF5 reader looks
                if dataset_name:
                    node.attrs["video"] = entry.video


def _files(entry: ManifestEntry, feats: np.ndarray, settings: dict[str, Any], fmt: str,
           split: bool) -> list[tuple[str, np.ndarray]]:
    """The files of one video in a folder pack: (name, rows) for the video, or for each of its crops."""
    suffix = {"txt": "_C.txt", "pt": ".pt", "npy": ".npy"}[fmt]
    if not split:
        return [(f"{entry.key}{suffix}", feats)]
    return [(f"{entry.key}_{k}{suffix}", crop_rows(feats, settings, k)) for k in range(len(entry.crop_boxes))]


def _write_folder(to: Path, videos: Iterator[Video], settings: dict[str, Any], fmt: str, keys: str,
                  split: bool = False) -> None:
    if to.exists() and not (to.is_dir() and (to / INDEX).is_file()):
        raise ConfigError(f"{to}: exists and is not a `c3d pack` output; choose another --to or remove it")
    tmp = to.parent / f".{to.name}.pack-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        index: dict[str, Any] = {"format": fmt, "settings": settings, "videos": {}}
        for entry, feats, times in videos:
            files = _files(entry, feats, settings, fmt, split)
            for name, rows in files:
                _write_rows(tmp / name, rows, fmt)
            index["videos"][entry.key] = {
                **({"files": [n for n, _ in files]} if split else {"file": files[0][0]}), "video": entry.video,
                **({"crop_boxes": entry.crop_boxes} if entry.crops != "center" else {}),
                "frames": None if times is None else times[:, :2].astype(int).tolist(),
                "times": None if times is None else [[_num(a), _num(b)] for a, b in times[:, 2:]]}
        atomic_write_text(tmp / KEYS, keys)
        atomic_write_text(tmp / INDEX, json.dumps(index, indent=1) + "\n")
        _replace_folder(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def _write_rows(path: Path, rows: np.ndarray, fmt: str) -> None:
    if fmt == "txt":
        with open(path, "w", encoding="ascii") as f:
            for row in np.atleast_2d(rows):
                f.write("".join(f"{v:f} " for v in row.tolist()) + "\n")
    elif fmt == "npy":
        data = io.BytesIO()  # numpy's own file writer reports a full disk as a short write, with no errno
        np.save(data, np.ascontiguousarray(rows, dtype=np.float32))
        path.write_bytes(data.getvalue())
    else:
        import torch

        data = io.BytesIO()  # torch's own file writer reports a full disk as an opaque RuntimeError
        torch.save(torch.from_numpy(np.ascontiguousarray(np.atleast_2d(rows), dtype=np.float32)), data)
        path.write_bytes(data.getvalue())


def _replace_folder(tmp: Path, to: Path) -> None:
    """Put the finished folder `tmp` at `to`, replacing an earlier pack there; `to` is never half-written."""
    old = to.parent / f".{to.name}.old-{os.getpid()}"
    if to.exists():
        os.rename(to, old)
    try:
        os.rename(tmp, to)
    except OSError:
        if old.exists():
            with contextlib.suppress(OSError):
                os.rename(old, to)
        raise
    shutil.rmtree(old, ignore_errors=True)
