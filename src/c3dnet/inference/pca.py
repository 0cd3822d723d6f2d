"""ActivityNet's PCA of C3D features: each row becomes `(x - x_mean) @ U[:, :dim]`.

ActivityNet's released C3D features are fc7 of the Sports-1M C3D reduced to 500 dimensions with the PCA of
`PCA_activitynet_v1-3.hdf5`: an HDF5 file holding the datasets `data/U` (D x K, components as columns), `data/S`
(the singular values) and `data/x_mean` (D values). `PcaProjection.load` reads that file, or an `.npz` holding
arrays of the same names, keeping the first `dim` columns of U. Nothing in the file is executed: HDF5 datasets of
plain numbers are read (none stored in other files), and `.npz` arrays without pickles.

Example:
    >>> pca = PcaProjection.load("PCA_activitynet_v1-3.hdf5", dim=500)       # doctest: +SKIP
    >>> pca.apply(fc7_rows).shape                                              # doctest: +SKIP
    (41, 500)
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c3dnet.errors import ConfigError, DataError

BASIS, SINGULAR, MEAN = "data/U", "data/S", "data/x_mean"
LAYOUT = (f"ActivityNet's PCA file (PCA_activitynet_v1-3.hdf5) holds {BASIS} (features x components), {SINGULAR} "
          f"and {MEAN}; an .npz needs arrays of the same names")
DEFAULT_DIM = 500
"""The dimension ActivityNet's released features keep."""
MAX_VALUES = 1 << 28
"""Most values of one array read from a PCA file (2 GiB of float64): larger than any PCA of C3D features."""
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True, eq=False)
class PcaProjection:
    """The first `dim` principal components of a PCA file, and the mean they are taken about.

    Two projections are equal when they come from the same file contents (`sha256`) and keep the same `dim`.
    One `recorded` in a manifest has no arrays: it says what was applied, and cannot apply it again.

    Attributes:
        source: the file it was read from.
        sha256: the SHA-256 of the file's bytes (what a manifest records).
        dim: the dimension of the reduced rows.
        input_dim: the dimension of the rows it reduces (0 when only recorded).
        mean: float64 (input_dim,), `data/x_mean`.
        basis: float64 (input_dim, dim), `data/U[:, :dim]`.
    """

    source: str
    sha256: str
    dim: int
    input_dim: int = 0
    mean: np.ndarray | None = field(default=None, repr=False)
    basis: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int = DEFAULT_DIM) -> PcaProjection:
        """Read `path` (HDF5 or .npz, told apart by their contents) keeping `dim` components.

        Raises:
            DataError: naming the file and the dataset that is missing, malformed or too small.
            ConfigError: `dim` below 1; HDF5 without h5py installed.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"--pca-dim must be a whole number of dimensions >= 1, got {dim!r}")
        path = Path(path)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise DataError(f"{path}: {e.strerror or e}; give the PCA file (HDF5 or .npz) with --pca") from e
        if head.startswith(b"PK"):
            mean, basis = _read_npz(path, int(dim))
        elif head == HDF5_MAGIC or _is_hdf5(path):
            mean, basis = _read_h5(path, int(dim))
        else:
            raise DataError(f"{path}: neither an HDF5 file nor an .npz; {LAYOUT}")
        if not (np.isfinite(mean).all() and np.isfinite(basis).all()):
            raise DataError(f"{path}: {BASIS} or {MEAN} holds values that are not finite numbers; use an intact file")
        mean.flags.writeable = basis.flags.writeable = False
        return cls(str(path), file_sha256(path), int(dim), len(mean), mean, basis)

    @classmethod
    def recorded(cls, sha256: str, dim: int, source: str = "") -> PcaProjection:
        """What a manifest says was applied (no arrays)."""
        return cls(source, sha256, int(dim))

    def check_input(self, dim: int, layer: str) -> None:
        """`ConfigError` naming both when rows of `dim` values (`layer`'s) are not what this PCA reduces."""
        if self.input_dim and self.input_dim != dim:
            raise ConfigError(f"{self.source}: {BASIS} and {MEAN} are for rows of {self.input_dim} values, but {layer} "
                              f"of these weights gives rows of {dim}; use a PCA made from {layer} features of these "
                              "weights (or the layer it was made for)")

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows (..., dim) of rows (..., input_dim): `(x - x_mean) @ U[:, :dim]`, computed in float64."""
        if self.basis is None or self.mean is None:
            raise ConfigError(f"the PCA with SHA-256 {self.sha256} is only recorded here; give its file with --pca")
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape[-1] != self.input_dim:
            raise ValueError(f"rows of {rows.shape[-1]} values given to a PCA of {self.input_dim} ({self.source})")
        return ((rows - self.mean) @ self.basis).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "sha256": self.sha256, "dim": self.dim}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PcaProjection) and (self.sha256, self.dim) == (other.sha256, other.dim)

    def __hash__(self) -> int:
        return hash((self.sha256, self.dim))


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(path: Path, mean_shape: tuple[int, ...], basis_shape: tuple[int, ...], dim: int) -> int:
    """The input dimension, once the shapes are those of a PCA keeping `dim` components."""
    if len(basis_shape) != 2:
        raise DataError(f"{path}: {BASIS} has shape {basis_shape}, not (features, components); {LAYOUT}")
    d, k = basis_shape
    if int(np.prod(mean_shape)) != d or len([n for n in mean_shape if n != 1]) > 1:
        raise DataError(f"{path}: {MEAN} has shape {mean_shape} but {BASIS} is {d} x {k}: the mean needs {d} values "
                        "(one per feature)")
    if dim > k:
        raise DataError(f"{path}: {BASIS} has {k} components, fewer than --pca-dim {dim}; give --pca-dim 1..{k}")
    if d * k > MAX_VALUES:
        raise DataError(f"{path}: {BASIS} is {d} x {k}, larger than any PCA of C3D features; check the file")
    return d


def _read_h5(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import h5py
    except ImportError as e:
        raise ConfigError(f"{path}: an HDF5 PCA file needs h5py: pip install 'c3dnet[h5]' (or pip install h5py)") from e
    try:
        with h5py.File(path, "r") as f:
            basis_ds, mean_ds = (_h5_dataset(h5py, f, path, name) for name in (BASIS, MEAN))
            _checked(path, mean_ds.shape, basis_ds.shape, dim)
            singular = f.get(SINGULAR)
            if singular is not None and not isinstance(singular, h5py.Dataset):
                raise DataError(f"{path}: {SINGULAR} is not a dataset; {LAYOUT}")
            basis = np.asarray(basis_ds[:, :dim], dtype=np.float64)  # only the columns kept are read
            mean = np.asarray(mean_ds[()], dtype=np.float64).reshape(-1)
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e}); {LAYOUT}") from e
    return mean, basis


def _h5_dataset(h5py: Any, f: Any, path: Path, name: str) -> Any:
    """Dataset `name` of plain numbers stored in the file itself; `DataError` naming the file and the dataset."""
    try:
        obj = f.get(name)
    except (KeyError, OSError) as e:  # a dangling soft or external link
        raise DataError(f"{path}: {name} cannot be opened ({e}); {LAYOUT}") from e
    if obj is None:
        raise DataError(f"{path}: no dataset {name}; {LAYOUT}")
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: {name} is a group, not a dataset; {LAYOUT}")
    if obj.dtype.kind not in "fiu":
        raise DataError(f"{path}: {name} holds {obj.dtype} values, not numbers; {LAYOUT}")
    if obj.external or obj.is_virtual or obj.file != f:
        raise DataError(f"{path}: {name} is stored outside the file (external or virtual dataset, or a link to "
                        "another file); c3dnet reads only data inside the PCA file")
    return obj


def _is_hdf5(path: Path) -> bool:
    """HDF5 files may start after a user block (512, 1024, ... bytes): h5py tells."""
    try:
        import h5py
    except ImportError:
        return path.suffix.lower() in (".h5", ".hdf5")  # then `_read_h5` says to install h5py
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _read_npz(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            sizes = {info.filename: info.file_size for info in z.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable .npz ({e}); {LAYOUT}") from e
    arrays = []
    with np.load(path, allow_pickle=False) as npz:
        for name in (BASIS, MEAN):
            if name not in npz.files:
                raise DataError(f"{path}: no array {name} (it holds {', '.join(npz.files) or 'none'}); {LAYOUT}")
            if sizes.get(f"{name}.npy", 0) > 8 * MAX_VALUES:
                raise DataError(f"{path}: {name} is larger than any PCA of C3D features; check the file")
            try:
                a = npz[name]
            except ValueError as e:  # object arrays: they would need a pickle
                raise DataError(f"{path}: {name} is not an array of numbers ({e}); {LAYOUT}") from e
            if a.dtype.kind not in "fiu":
                raise DataError(f"{path}: {name} holds {a.dtype} values, not numbers; {LAYOUT}")
            arrays.append(a)
    basis, mean = arrays
    _checked(path, mean.shape, basis.shape, dim)
    return mean.astype(np.float64).reshape(-1), np.ascontiguousarray(basis[:, :dim], dtype=np.float64)
