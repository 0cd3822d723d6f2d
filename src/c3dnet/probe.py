"""The paper's linear probe on extracted features: video mean of fc6, L2, linear SVM; PCA; t-SNE.

Section 4 of Tran et al.: each video's fc6 clip features are averaged and L2-normalised, a linear SVM is trained
on the train split and scored on the test split (82.3% on UCF-101 split 1 with one net). The compactness
experiment reduces the features with PCA first (52.8% with 10 dimensions); figure 5 shows a t-SNE embedding
of the video features coloured by class.

Example:
    >>> from c3dnet.probe import linear_probe, video_feature
    >>> x_train = np.stack([video_feature(np.load(f)) for f in train_files])     # doctest: +SKIP
    >>> result, preds = linear_probe(x_train, y_train, x_test, y_test, pca=10)  # doctest: +SKIP
    >>> result.accuracy                                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from c3dnet.errors import DataError
from c3dnet.log import get_logger
from c3dnet.metrics import l2_normalize, mean_class_accuracy

log = get_logger(__name__)


def video_feature(rows: np.ndarray) -> np.ndarray:
    """One video's descriptor: the mean of its clip rows (num_clips, dim), then L2 (a (dim,) row is just L2'd)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 2:
        rows = rows.mean(axis=0)
    if rows.ndim != 1:
        raise ValueError(f"expected clip features (num_clips, dim) or a video feature (dim,), got {rows.shape}")
    return l2_normalize(rows)


@dataclass(frozen=True)
class ProbeResult:
    """Test accuracy of a linear SVM on video features (fractions in [0, 1])."""

    accuracy: float
    mean_class_accuracy: float
    train_accuracy: float
    num_train: int
    num_test: int
    num_classes: int
    dim: int  # after PCA
    input_dim: int
    pca: int | None
    pca_explained_variance: float | None
    svm_c: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    pca: int | None = None,
    svm_c: float = 1.0,
    seed: int = 0,
) -> tuple[ProbeResult, np.ndarray]:
    """Train `sklearn.svm.LinearSVC` on (train_x, train_y), score it on the test set.

    Args:
        train_x, test_x: (num_videos, dim) video features (already averaged and L2-normalised).
        train_y, test_y: (num_videos,) integer labels.
        pca: reduce to this many dimensions with PCA fitted on the train features (None: no PCA).
        svm_c: the SVM's C.
        seed: random state of PCA and the SVM.

    Returns:
        The result and the test predictions (num_test,).
    """
    from sklearn.decomposition import PCA
    from sklearn.svm import LinearSVC

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test features must be (N, D) with the same D, got {train_x.shape}, "
                         f"{test_x.shape}")
    if len(np.unique(train_y)) < 2:
        raise DataError(f"the train split has {len(np.unique(train_y))} class(es); a linear SVM needs at least 2")
    input_dim = train_x.shape[1]
    explained = None
    if pca is not None:
        k = min(pca, train_x.shape[0], input_dim)
        if k < pca:
            log.warning("PCA to %d dimensions is more than the %d train videos or %d features allow; using %d",
                        pca, train_x.shape[0], input_dim, k)
        reducer = PCA(n_components=k, random_state=seed).fit(train_x)
        train_x, test_x = reducer.transform(train_x), reducer.transform(test_x)
        explained = float(reducer.explained_variance_ratio_.sum())
    svm = LinearSVC(C=svm_c, random_state=seed, max_iter=20000).fit(train_x, train_y)
    preds = svm.predict(test_x)
    classes = np.unique(test_y)
    result = ProbeResult(
        accuracy=float((preds == test_y).mean()),
        mean_class_accuracy=mean_class_accuracy(preds, test_y),
        train_accuracy=float((svm.predict(train_x) == train_y).mean()),
        num_train=len(train_y),
        num_test=len(test_y),
        num_classes=len(np.union1d(np.unique(train_y), classes)),
        dim=train_x.shape[1],
        input_dim=input_dim,
        pca=pca,
        pca_explained_variance=explained,
        svm_c=svm_c,
    )
    return result, preds


def tsne_plot(
    x: np.ndarray,
    y: np.ndarray,
    path: str | os.PathLike[str],
    class_names: list[str] | None = None,
    seed: int = 0,
    title: str = "C3D video features (t-SNE)",
) -> np.ndarray:
    """Embed the features in 2-D with t-SNE and save a scatter plot coloured by class as PNG (atomically).

    Returns:
        The (num_videos, 2) embedding.
    """
    from sklearn.manifold import TSNE

    from c3dnet.plots import colormap, figure, save_png

    x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
    if len(x) < 5:
        raise DataError(f"t-SNE needs at least 5 videos, got {len(x)}")
    perplexity = float(min(30.0, (len(x) - 1) / 3.0))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    classes = np.unique(y)
    fig, (ax,) = figure(1, 1, (8, 8))
    cmap = colormap("tab20" if len(classes) > 10 else "tab10")
    for i, c in enumerate(classes):
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else f"class {c}"
        pts = emb[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=12, color=cmap(i % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    save_png(fig, path)
    return emb


@dataclass(frozen=True)
class LabelledVideo:
    """A video named in a split (its path or name) with its label."""

    name: str
    label: int
    where: str  # "file:line" or the dataset it came from


def read_label_list(path: str | os.PathLike[str]) -> list[LabelledVideo]:
    """Lines `<video path or name> <label>` (extra fields between are ignored, `#` comments skipped)."""
    from c3dnet.data.sources import text_lines

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label list not found; give lines '<video> <label>'")
    items = []
    for n, line in text_lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise DataError(f"{path}:{n}: expected '<video> <label>', got {line!r}")
        try:
            label = int(fields[-1])
        except ValueError as e:
            raise DataError(f"{path}:{n}: the label {fields[-1]!r} is not an integer; lines are '<video> "
                            "<label>'") from e
        name = fields[0] if Path(fields[0]).is_absolute() else str(path.parent / fields[0])
        items.append(LabelledVideo(name=name, label=label, where=f"{path}:{n}"))
    if not items:
        raise DataError(f"{path}: no '<video> <label>' lines")
    return items


def _stem(name: str) -> str:
    p = Path(name)
    return p.name if not p.suffix else p.stem


def gather_features(
    feature_dir: str | os.PathLike[str], videos: list[LabelledVideo], allow_missing: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Video features (N, D) and labels (N,) of `videos` from an extraction folder (`c3d extract --out`).

    A video matches a manifest entry by its absolute path, else by file name without extension (when unique).

    Returns:
        (features, labels, names of the videos that have no features); the last is empty unless `allow_missing`.
    """
    from c3dnet.features import load_features, read_manifest

    feature_dir = Path(feature_dir)
    entries = read_manifest(feature_dir)
    if not entries:
        raise DataError(f"{feature_dir}: no extracted features (no manifest entries); run `c3d extract --out "
                        f"{feature_dir} ...` first")
    cropped = next((e for e in entries if e.crops != "center"), None)
    if cropped is not None:
        raise DataError(f"{feature_dir}: holds features of --crops {cropped.crops} ({cropped.key}: {cropped.shape}); "
                        "the probe takes one row per clip or per video: extract with the centre crop for it")
    layers = {e.layer for e in entries}
    if layers != {"fc6"}:
        log.warning("%s holds %s features; the paper's probe uses fc6", feature_dir, sorted(layers))
    by_path = {e.video: e for e in entries}
    by_stem: dict[str, list] = {}
    for e in entries:
        by_stem.setdefault(_stem(e.video), []).append(e)
    feats, labels, missing = [], [], []
    for v in videos:
        entry = by_path.get(str(Path(v.name).resolve()))
        if entry is None:
            candidates = by_stem.get(_stem(v.name), [])
            entry = candidates[0] if len(candidates) == 1 else None
        if entry is None:
            missing.append(v.name)
            continue
        feats.append(video_feature(load_features(feature_dir, entry)))
        labels.append(v.label)
    if missing and not allow_missing:
        raise DataError(f"{videos[0].where.split(':')[0]}: {len(missing)} of {len(videos)} videos have no features "
                        f"in {feature_dir} (first: {missing[0]}); extract them, or pass --allow-missing")
    if not feats:
        raise DataError(f"{feature_dir}: none of the {len(videos)} listed videos has features")
    return np.stack(feats), np.asarray(labels, dtype=np.int64), missing
