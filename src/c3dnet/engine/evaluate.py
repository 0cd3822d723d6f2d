"""Multi-clip testing: clip scores aggregated per video, and the metrics of the reference protocol.

`ClipAggregator` keys clip scores by video index (so the padding a distributed sampler adds counts once) and
turns them into an `EvalResult`: video top-1 and top-5, mean class accuracy, and clip-level top-1 (every clip
scored on its own). The metrics themselves are `c3dnet.metrics`'.

Example:
    >>> import numpy as np
    >>> agg = ClipAggregator()
    >>> agg.add([0, 1], np.array([[[2.0, 0.0]], [[0.0, 1.0]]]), [0, 0])    # 2 videos x 1 clip x 2 classes
    >>> agg.result().top1
    0.5
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from c3dnet.engine.distributed import all_gather_objects
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import progress_bar
from c3dnet.metrics import (
    Average,
    as_numpy,
    average_clips,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    topk_accuracy,
)


class ClipAggregator:
    """Clip scores collected per video index; the first time a video is seen wins.

    A DistributedSampler (or `data.epoch_order.ResumableSampler`) pads the last ranks with repeats of the first
    videos; those repeats carry an index already seen and are dropped, so every video counts exactly once.
    Under torchrun, `gather()` merges every rank's videos.
    """

    def __init__(self) -> None:
        self.clip_scores: dict[int, np.ndarray] = {}  # video index -> (K, C) float32
        self.labels: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.clip_scores)

    def add(self, indices: torch.Tensor | np.ndarray, clip_scores: torch.Tensor | np.ndarray,
            labels: torch.Tensor | np.ndarray) -> None:
        """Record a batch: `indices` (B,), `clip_scores` (B, K, C) raw logits, `labels` (B,)."""
        indices, labels = as_numpy(indices).astype(np.int64), as_numpy(labels).astype(np.int64)
        clip_scores = as_numpy(clip_scores).astype(np.float32)
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
        if not self.clip_scores:
            raise ValueError("no videos were evaluated")
        order = sorted(self.clip_scores)
        clips = np.stack([self.clip_scores[i] for i in order])  # (V, K, C)
        labels = np.array([self.labels[i] for i in order], dtype=np.int64)
        num_classes = num_classes or clips.shape[2]
        video_scores = average_clips(clips, average)  # (V, C)
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
    runner: ClipRunner,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    average: Average = "score",
    num_classes: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score every video of `loader` (batches of (clips uint8 (B, K, 3, T, H, W), labels (B,), indices (B,))).

    `runner` (`ClipRunner` with output "logits") normalises and runs the clips; on a GPU one batch is queued while
    the next is loaded. Under torchrun each rank scores its share and the results are gathered, so every rank
    returns the metrics over all videos.
    """
    if runner.output != "logits":
        raise ValueError(f"evaluate needs a runner of logits, got one of {runner.output}")
    aggregator = ClipAggregator()
    bar = progress_bar(len(loader) if hasattr(loader, "__len__") else None, "test", "batch", enabled=progress)
    pending = None  # (rows being computed, labels, indices, clips per video)

    def collect() -> None:
        rows, labels, indices, k = pending
        aggregator.add(indices, rows.result().reshape(len(indices), k, -1), labels)  # (B, K, C)

    for clips, labels, indices in loader:
        queued = (runner.submit(clips.flatten(0, 1)), labels, indices, clips.shape[1])  # (B*K, 3, T, H, W)
        if pending is not None:
            collect()
        pending = queued
        bar.update(1)
    if pending is not None:
        collect()
    bar.close()
    aggregator.gather()
    return aggregator.result(average, num_classes or runner.dim)
