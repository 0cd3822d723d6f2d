"""The paper's probe: mean then L2, linear SVM, PCA, t-SNE, label lists, the CLI's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c3dnet.cli import main
from c3dnet.data.encode import write_video
from c3dnet.data.sources import VideoRecord
from c3dnet.errors import DataError
from c3dnet.features import PARTS_DIR, ClipRunner, ExtractOptions, ManifestEntry, extract
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.probe import linear_probe, read_label_list, tsne_plot, video_feature
from tests.conftest import tiny_config


def _clusters(rng, n_per_class, num_classes, dim, spread=0.3):
    centres = rng.normal(size=(num_classes, dim))
    y = np.repeat(np.arange(num_classes), n_per_class)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_video_feature_is_mean_then_l2():
    rows = np.array([[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(video_feature(rows), np.array([1.5, 0.5]) / np.hypot(1.5, 0.5))
    # Not the mean of L2-normalised rows, which would weigh the clips equally: (0.5, 0.5) / norm.
    assert not np.allclose(video_feature(rows), np.array([1.0, 1.0]) / np.sqrt(2))
    np.testing.assert_allclose(video_feature(np.array([0.0, 2.0])), [0.0, 1.0])


def test_linear_svm_separates_clusters_and_not_noise():
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 20, 4, 16)
    order = rng.permutation(len(y))
    train, test = order[:50], order[50:]
    result, preds = linear_probe(x[train], y[train], x[test], y[test])
    assert result.accuracy == 1.0 and result.mean_class_accuracy == 1.0 and (preds == y[test]).all()
    assert (result.num_train, result.num_test, result.dim, result.num_classes) == (50, 30, 16, 4)
    pca, _ = linear_probe(x[train], y[train], x[test], y[test], pca=3)
    assert pca.dim == 3 and pca.input_dim == 16 and 0 < pca.pca_explained_variance <= 1 and pca.accuracy > 0.9
    shuffled = rng.permutation(y)
    chance, _ = linear_probe(x[train], shuffled[train], x[test], shuffled[test])
    assert chance.accuracy < 0.6  # random labels cannot be learned: the probe is not cheating


def test_tsne_plot_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 8, 3, 10, spread=0.05)
    emb = tsne_plot(x, y, tmp_path / "t.png", ["a", "b", "c"])
    assert emb.shape == (24, 2)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Tight clusters stay together: each point's nearest neighbour in the plot has its class.
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2) + np.eye(len(emb)) * 1e9
    assert (y[d.argmin(1)] == y).mean() > 0.9


def test_label_list_errors_name_the_line(tmp_path):
    (tmp_path / "a.txt").write_text("v1.avi 0\n# comment\n\nv2.avi x\n")
    with pytest.raises(DataError, match=r"a.txt:4: the label 'x'"):
        read_label_list(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("v1.avi 0\nlonely\n")
    with pytest.raises(DataError, match=r"b.txt:2: expected"):
        read_label_list(tmp_path / "b.txt")
    (tmp_path / "c.txt").write_text("/abs/v1.avi 2\nrel/v2.avi 1 \n")
    items = read_label_list(tmp_path / "c.txt")
    assert [(i.name, i.label) for i in items] == [("/abs/v1.avi", 2), (str(tmp_path / "rel/v2.avi"), 1)]


def _write_feature_dir(out, rng, n_per_class=6, num_classes=3, dim=12):
    """A folder as `c3d extract` leaves it: clip rows per video that scatter around a class centre."""
    centres = rng.normal(size=(num_classes, dim)) * 3
    (out / PARTS_DIR).mkdir(parents=True)
    lines = {"train": [], "test": []}
    for c in range(num_classes):
        for i in range(n_per_class):
            key = f"v_c{c}_{i}"
            rows = np.maximum(centres[c] + rng.normal(size=(5, dim)), 0).astype(np.float32)  # (clips, dim)
            np.save(out / f"{key}.npy", rows)
            entry = ManifestEntry(key=key, output=f"{key}.npy", video=f"/videos/{key}.avi", layer="fc6",
                                  num_frames=80, fps=25.0, clip_starts=[0, 16, 32, 48, 64], clip_len=16,
                                  frame_interval=1, stride=16, video_mean=False, l2=False, dim=dim)
            (out / PARTS_DIR / f"{key}.json").write_text(json.dumps(entry.to_dict()))
            lines["train" if i < 4 else "test"].append(f"{key}.avi {c}\n")
    for split, text in lines.items():
        (out.parent / f"{split}.txt").write_text("".join(text))


def test_probe_cli_json(tmp_path, capsys):
    _write_feature_dir(tmp_path / "feats", np.random.default_rng(0))
    rc = main(["probe", "--features", str(tmp_path / "feats"), "--train-list", str(tmp_path / "train.txt"),
               "--test-list", str(tmp_path / "test.txt"), "--json", "--out", str(tmp_path / "r.json"),
               "--tsne", str(tmp_path / "t.png")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["accuracy"] == 1.0 and printed["num_train"] == 12 and printed["num_test"] == 6
    assert printed["missing_train"] == 0 and printed["pca"] is None and printed["dim"] == 12
    assert (tmp_path / "t.png").stat().st_size > 1000
    rc = main(["probe", "--features", str(tmp_path / "feats"), "--train-list", str(tmp_path / "train.txt"),
               "--test-list", str(tmp_path / "test.txt"), "--pca", "2"])
    assert rc == 0 and "PCA to 2" in capsys.readouterr().out
    (tmp_path / "test.txt").write_text("v_unknown.avi 0\n")
    assert main(["probe", "--features", str(tmp_path / "feats"), "--train-list", str(tmp_path / "train.txt"),
                 "--test-list", str(tmp_path / "test.txt")]) == 2
    assert "test.txt: 1 of 1 videos have no features" in capsys.readouterr().err


def test_probe_on_extracted_features_of_distinct_videos(tmp_path, capsys):
    """End to end: videos of three visually distinct kinds -> `extract` fc6 -> the probe separates them."""
    rng = np.random.default_rng(0)
    kinds = [lambda r: np.full((12, 48, 64, 3), 40 + r.integers(20), np.uint8),  # dark, static
             lambda r: np.full((12, 48, 64, 3), 200 + r.integers(20), np.uint8),  # bright, static
             lambda r: r.integers(0, 256, (12, 6, 8, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)]  # flicker
    lines = {"train": [], "test": []}
    records = []
    for c, make in enumerate(kinds):
        for i in range(5):
            path = tmp_path / "videos" / f"k{c}_{i}.avi"
            write_video(path, make(rng))
            records.append(VideoRecord(path, -1))
            lines["train" if i < 3 else "test"].append(f"{path} {c}\n")
    for split, text in lines.items():
        (tmp_path / f"{split}.txt").write_text("".join(text))
    model = C3D(tiny_config(), preprocess=Preprocess(clip_len=8, crop_size=32, short_side=36)).eval()
    extract(records, ClipRunner(model, "fc6"), tmp_path / "feats", ExtractOptions(FeatureRecipe(stride=4)),
            progress=False)
    assert main(["probe", "--features", str(tmp_path / "feats"), "--train-list", str(tmp_path / "train.txt"),
                 "--test-list", str(tmp_path / "test.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
