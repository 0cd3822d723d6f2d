"""Multi-clip testing: clip scores aggregated per video, and the metrics of the reference protocol.

Metrics (all fractions in [0, 1]):
- `topk_accuracy(scores, labels, k)`: a video counts when its label is among the k best scores. Ties are
  broken toward the lower class index (the order `argmax` uses), so top-1 always agrees with `argmax`.
- `mean_class_accuracy(preds, labels, num_classes)`: the mean over classes of per-class recall, over the
  classes that occur in `labels` (a class absent from the split has no recall and is left out).
- clip-level top-1: every clip scored on its own, reported beside the video-level numbers.

Example:
    >>> import numpy as np
    >>> topk_accuracy(np.array([[0.1, 0.9], [0.5, 0.5]]), np.array([1, 1]), k=1)   # tie -> class 0
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from c3dnet.engine.device import inference_context, to_input
from c3dnet.engine.distributed import all_gather_objects

Average = Literal["score", "prob"]


def _ranks_of_labels(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each label's score, ties counted against the label when the rival index is lower."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]  # (N, 1)
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]  # (N, C)
    return ((scores > true) | ((scores == true) & lower_index)).sum(axis=1)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def topk_accuracy(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, k: int = 1) -> float:
    """Fraction of rows (N, C) whose label (N,) is among the top `k` scores; `k` is capped at C."""
    scores, labels = _numpy(scores), _numpy(labels)
    if len(labels) == 0:
        return float("nan")
    return float((_ranks_of_labels(scores, labels) < min(k, scores.shape[1])).mean())


def mean_class_accuracy(preds: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    recalls = per_class_accuracy(preds, labels, num_classes)
    present = ~np.isnan(recalls)
    return float(recalls[present].mean()) if present.any() else float("nan")


def per_class_accuracy(
    preds: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """Recall of each class (num_classes,), NaN for classes absent from `labels`."""
    preds, labels = _numpy(preds).astype(np.int64), _numpy(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / counts, np.nan)


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class ClipAggregator:
    """Clip scores collected per video index; the first time a video is seen wins.

    A DistributedSampler (or `ResumableSampler`) pads the last ranks with repeats of the first videos; those
    repeats carry an index already seen and are dropped, so every video counts exactly once. Under
    torchrun, `gather()` merges every rank's videos.
    """

    def __init__(self) -> None:
        self.clip_scores: dict[int, np.ndarray] = {}  # video index -> (K, C) float32
        self.labels: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.clip_scores)

    def add(self, indices: torch.Tensor | np.ndarray, clip_scores: torch.Tensor | np.ndarray,
            labels: torch.Tensor | np.ndarray) -> None:
        """Record a batch: `indices` (B,), `clip_scores` (B, K, C) raw logits, `labels` (B,)."""
        indices, labels = _numpy(indices).astype(np.int64), _numpy(labels).astype(np.int64)
        clip_scores = _numpy(clip_scores).astype(np.float32)
        for i, s, y in zip(indices.tolist(), clip_scores, labels.tolist()):
            if i not in self.clip_scores:
                self.clip_scores[i] = s
                self.labels[i] = y

    def gather(self) -> None:
        """Merge the videos of all ranks (no-op when not distributed)."""
        parts = all_gather_objects((self.clip_scores, self.labels))
        for scores, labels in parts:
            for i, s in scores.items():
                if i not in self.clip_scores:
                    self.clip_scores[i] = s
                    self.labels[i] = labels[i]

    def result(self, average: Average = "score", num_classes: int | None = None) -> EvalResult:
        """Video scores (clip logits averaged, or softmax probabilities averaged with "prob") and the metrics."""
        if average not in ("score", "prob"):
            raise ValueError(f"average must be 'score' or 'prob', got {average!r}")
        if not self.clip_scores:
            raise ValueError("no videos were evaluated")
        order = sorted(self.clip_scores)
        clips = np.stack([self.clip_scores[i] for i in order])  # (V, K, C)
        labels = np.array([self.labels[i] for i in order], dtype=np.int64)
        num_classes = num_classes or clips.shape[2]
        if average == "prob":
            video_scores = softmax(clips, axis=2).mean(axis=1)
        else:
            video_scores = clips.mean(axis=1)  # (V, C)
        preds = video_scores.argmax(axis=1)
        clip_hits = clips.argmax(axis=2) == labels[:, None]  # (V, K)
        return EvalResult(
            top1=topk_accuracy(video_scores, labels, 1),
            top5=topk_accuracy(video_scores, labels, 5),
            mean_class_accuracy=mean_class_accuracy(preds, labels, num_classes),
            clip_top1=float(clip_hits.mean()),
            num_videos=len(order),
            clips_per_video=clips.shape[1],
            video_indices=np.array(order, dtype=np.int64),
            labels=labels,
            scores=video_scores.astype(np.float32),
            num_classes=num_classes,
            average=average,
        )


@dataclass
class EvalResult:
    """Video-level metrics (fractions) and per-video scores, in video-index order."""

    top1: float
    top5: float
    mean_class_accuracy: float
    clip_top1: float
    num_videos: int
    clips_per_video: int
    video_indices: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)  # (V, C) averaged logits or probabilities
    num_classes: int = 0
    average: str = "score"

    @property
    def preds(self) -> np.ndarray:
        return self.scores.argmax(axis=1)

    def metrics(self) -> dict[str, float | int]:
        """Exactly the keys `c3d test --json` prints."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "mean_class_accuracy": self.mean_class_accuracy,
            "clip_top1": self.clip_top1,
            "num_videos": self.num_videos,
            "clips_per_video": self.clips_per_video,
        }

    def per_class_accuracy(self) -> np.ndarray:
        return per_class_accuracy(self.preds, self.labels, self.num_classes)

    def confusion_matrix(self) -> np.ndarray:
        return confusion_matrix(self.preds, self.labels, self.num_classes)


def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    average: Average = "score",
    amp: bool = True,
    channels_last: bool = True,
    num_classes: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score every video of `loader` (batches of (clips uint8 (B, K, 3, T, H, W), labels (B,), indices (B,))).

    Under torchrun each rank scores its share and the results are gathered, so every rank returns the
    metrics over all videos. The model's own `preprocess` normalises the clips on `device`.
    """
    core = model.module if hasattr(model, "module") else model
    core = getattr(core, "_orig_mod", core)  # torch.compile wrapper
    preprocess = core.preprocess
    was_training = model.training
    model.eval()
    aggregator = ClipAggregator()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="test", unit="batch", dynamic_ncols=True)
    with inference_context(device, amp):
        for clips, labels, indices in batches:
            b, k = clips.shape[:2]
            x = to_input(clips.flatten(0, 1), preprocess, device, channels_last)  # (B*K, 3, T, H, W)
            logits = model(x).float().reshape(b, k, -1)  # (B, K, C)
            aggregator.add(indices, logits, labels)
    model.train(was_training)
    aggregator.gather()
    return aggregator.result(average, num_classes or core.num_classes)
