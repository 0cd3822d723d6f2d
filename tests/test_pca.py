"""ActivityNet's PCA of C3D features (issue 23): `--pca FILE [--pca-dim K]` on extract, the API and pack.

The PCA files are made here with numpy and h5py in ActivityNet's layout (`data/U`, `data/S`, `data/x_mean`, as in
`PCA_activitynet_v1-3.hdf5`) and as an .npz of the same names; the expected rows are the formula written out,
`(x - x_mean) @ U[:, :K]`, applied to the rows of an extraction without the PCA.
"""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch

import c3dnet
from c3dnet.cli import main
from c3dnet.errors import ConfigError, DataError
from c3dnet.features.manifest import read_manifest
from c3dnet.inference.pca import PcaProjection
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from tests.conftest import tiny_config
from tests.media import real_videos

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
D, K = 32, 20  # the tiny model's fc6 width, the components in the file


@pytest.fixture(scope="module")
def model() -> C3D:
    torch.manual_seed(0)
    return C3D(tiny_config(), preprocess=PRE, class_names=list("abcde")).eval()


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"data/U": np.linalg.qr(rng.standard_normal((D, K)))[0], "data/S": np.sort(rng.random(K))[::-1],
            "data/x_mean": rng.standard_normal(D)}


def _h5(path, arrays: dict[str, np.ndarray], skip: str = "") -> object:
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            if name != skip:
                f[name] = value
    return path


@pytest.fixture
def pca_h5(tmp_path, arrays):
    return _h5(tmp_path / "PCA_activitynet_v1-3.hdf5", arrays)


def _formula(rows: np.ndarray, arrays: dict[str, np.ndarray], dim: int) -> np.ndarray:
    return (rows.astype(np.float64) - arrays["data/x_mean"]) @ arrays["data/U"][:, :dim]


def _error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_extract_pca_is_the_formula_and_recorded(weights, pca_h5, arrays, tmp_path):
    video = real_videos()["carphone_pristine.mp4"]
    base = ["extract", "--weights", str(weights), "--stride", "16", "--no-progress", str(video)]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "pca"), "--pca", str(pca_h5), "--pca-dim", "8"]) == 0
    (plain,), (reduced,) = read_manifest(tmp_path / "plain"), read_manifest(tmp_path / "pca")
    rows = np.load(tmp_path / "plain" / plain.output)
    got = np.load(tmp_path / "pca" / reduced.output)
    assert got.shape == (len(rows), 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, _formula(rows, arrays, 8), rtol=1e-5, atol=1e-5)
    assert reduced.pca_sha256 == hashlib.sha256(pca_h5.read_bytes()).hexdigest()
    assert (reduced.pca_dim, reduced.dim, reduced.shape) == (8, D, [len(rows), 8])
    assert reduced.recipe.pca == PcaProjection.recorded(reduced.pca_sha256, 8)  # read back, not re-read

    # pack --pca reduces the plain folder's rows the same way; a folder already reduced is refused
    assert main(["pack", str(tmp_path / "plain"), "--to", str(tmp_path / "p.h5"), "--pca", str(pca_h5),
                 "--pca-dim", "8"]) == 0
    with h5py.File(tmp_path / "p.h5") as f:
        np.testing.assert_allclose(f[plain.key][()], got, rtol=1e-6, atol=1e-6)
        assert f.attrs["pca_sha256"] == reduced.pca_sha256 and f.attrs["pca_dim"] == 8
    assert main(["pack", str(tmp_path / "pca"), "--to", str(tmp_path / "q.h5"), "--pca", str(pca_h5)]) == 2


def test_npz_and_the_api_with_crops_and_video_mean(model, pca_h5, arrays, tmp_path):
    video = real_videos()["carphone_pristine.mp4"]
    npz = tmp_path / "pca.npz"
    np.savez(npz, **arrays)
    rows = c3dnet.extract_features(model, video, stride=32, crops=5, video_mean=True, device="cpu")  # (5, D)
    for path in (pca_h5, npz):
        got = c3dnet.extract_features(model, video, stride=32, crops=5, video_mean=True, pca=path, pca_dim=K,
                                      device="cpu")
        assert got.shape == (5, K)
        np.testing.assert_allclose(got, _formula(rows, arrays, K), rtol=1e-5, atol=1e-5)


def test_bad_pca_files_name_the_file_and_the_dataset(weights, arrays, tmp_path, capsys):
    no_u = _h5(tmp_path / "no_u.h5", arrays, skip="data/U")
    with pytest.raises(DataError, match=rf"{no_u}: no dataset data/U"):
        FeatureRecipe(pca=no_u, pca_dim=8)
    with pytest.raises(DataError, match=r"data/U has 20 components, fewer than --pca-dim 500"):
        FeatureRecipe(pca=_h5(tmp_path / "ok.h5", arrays))  # the default, ActivityNet's 500
    grouped = tmp_path / "group.h5"
    with h5py.File(grouped, "w") as f:
        f.create_group("data/U")
        f["data/x_mean"] = arrays["data/x_mean"]
    with pytest.raises(DataError, match="data/U is a group, not a dataset"):
        PcaProjection.load(grouped, 8)
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["data/U"] = h5py.ExternalLink(str(tmp_path / "ok.h5"), "data/U")
        f["data/x_mean"] = arrays["data/x_mean"]
    with pytest.raises(DataError, match="data/U is stored outside the file"):
        PcaProjection.load(linked, 8)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"data/U": np.array([object()] * 4, dtype=object), "data/x_mean": arrays["data/x_mean"]})
    with pytest.raises(DataError, match="data/U is not an array of numbers"):
        PcaProjection.load(pickled, 8)
    text = tmp_path / "pca.txt"
    text.write_text("U = ...\n")
    with pytest.raises(DataError, match="neither an HDF5 file nor an .npz"):
        PcaProjection.load(text, 8)
    with pytest.raises(ConfigError, match="--pca-dim applies with --pca FILE"):
        FeatureRecipe(pca_dim=8)

    # a PCA of other rows than the layer's: one line naming the file and both widths, before any decoding
    wide = {**arrays, "data/U": np.eye(64)[:, :K], "data/x_mean": np.zeros(64)}
    other = _h5(tmp_path / "fc7_4096.h5", wide)
    video = real_videos()["carphone_pristine.mp4"]
    assert main(["extract", "--weights", str(weights), "--out", str(tmp_path / "o"), "--pca", str(other),
                 "--pca-dim", "8", "--no-progress", str(video)]) == 2
    line = _error(capsys)
    assert f"{other}: data/U and data/x_mean are for rows of 64 values, but fc6 of these weights gives rows of " \
           f"{D}" in line
    assert not list((tmp_path / "o").glob("*.npy"))
