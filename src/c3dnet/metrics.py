"""Scores and metrics on numpy arrays: softmax, clip averaging, top-k, mean class accuracy, L2 normalisation.

A leaf module (it imports nothing from c3dnet): testing, prediction, feature extraction and the linear probe all
compute these here, the same way. All accuracies are fractions in [0, 1].

- `topk_accuracy(scores, labels, k)`: a row counts when its label is among the k best scores. Ties are broken
  toward the lower class index (the order `argmax` uses), so top-1 always agrees with `argmax`.
- `mean_class_accuracy(preds, labels, num_classes)`: the mean over classes of per-class recall, over the classes
  that occur in `labels` (a class absent from the split has no recall and is left out).
- `average_clips(clip_scores, average)`: a video's scores from its clips' logits: their mean ("score", the
  reference's test protocol) or the mean of their softmax ("prob", mmaction2's).

Example:
    >>> import numpy as np
    >>> topk_accuracy(np.array([[0.1, 0.9], [0.5, 0.5]]), np.array([1, 1]), k=1)   # tie -> class 0
    0.5
    >>> average_clips(np.array([[2.0, 0.0], [0.0, 0.0]]), "score").tolist()         # mean logits
    [1.0, 0.0]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Average = Literal["score", "prob"]
AVERAGES = ("score", "prob")


def as_numpy(x) -> np.ndarray:
    """A numpy array of `x`; torch tensors are detached and copied to the host (as float32 if floating)."""
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch here
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def average_clips(clip_scores: np.ndarray, average: Average = "score") -> np.ndarray:
    """Video scores (..., C) from clip logits (..., K, C): mean logits ("score") or mean probabilities ("prob")."""
    if average not in AVERAGES:
        raise ValueError(f"average must be 'score' or 'prob', got {average!r}")
    clip_scores = np.asarray(clip_scores)
    if average == "prob":
        return softmax(clip_scores, axis=-1).mean(axis=-2)
    return clip_scores.mean(axis=-2)


def _ranks_of_labels(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each label's score, ties counted against the label when the rival index is lower."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]  # (N, 1)
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]  # (N, C)
    return ((scores > true) | ((scores == true) & lower_index)).sum(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows (N, C) whose label (N,) is among the top `k` scores; `k` is capped at C."""
    scores, labels = as_numpy(scores), as_numpy(labels)
    if len(labels) == 0:
        return float("nan")
    return float((_ranks_of_labels(scores, labels) < min(k, scores.shape[1])).mean())


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (num_classes,), NaN for classes absent from `labels`."""
    preds, labels = as_numpy(preds).astype(np.int64), as_numpy(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / counts, np.nan)


def mean_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in `labels` (NaN when there are none)."""
    preds, labels = as_numpy(preds).astype(np.int64), as_numpy(labels).astype(np.int64)
    if num_classes is None:
        num_classes = int(max(preds.max(initial=-1), labels.max(initial=-1))) + 1
    recalls = per_class_accuracy(preds, labels, num_classes)
    present = ~np.isnan(recalls)
    return float(recalls[present].mean()) if present.any() else float("nan")


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (as_numpy(labels).astype(np.int64), as_numpy(preds).astype(np.int64)), 1)
    return cm


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along `axis`, in float64 (an all-zero vector stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
