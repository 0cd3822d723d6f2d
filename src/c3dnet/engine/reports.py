"""What training and testing leave in their work dirs: JSON-lines metrics, TensorBoard scalars, PNG plots,
per-class accuracy, a confusion matrix and per-video predictions. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from c3dnet.engine.evaluate import EvalResult
from c3dnet.fileio import atomic_write_text
from c3dnet.log import get_logger
from c3dnet.plots import figure, save_png

log = get_logger(__name__)


class MetricsLog:
    """Metrics records (dicts with "kind" and "iteration") kept in memory and rewritten as `metrics.jsonl`.

    Rewriting the whole (small) file atomically keeps it consistent with the checkpoint it belongs to; on
    resume, records after the resumed iteration (from the interrupted tail) are dropped.
    """

    def __init__(self, work_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = work_dir / "metrics.jsonl"
        self.work_dir = work_dir
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb = None
        self._tb_wanted = enabled and tensorboard

    def resume(self, iteration: int) -> None:
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
            self.records = [r for r in records if r.get("iteration", 0) <= iteration]

    def _writer(self, purge_step: int | None = None):  # noqa: ANN202 - SummaryWriter is imported lazily
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.work_dir / "tensorboard"), purge_step=purge_step)
            except ImportError as e:
                log.warning("TensorBoard logging off (%s)", e)
                self._tb_wanted = False
        return self._tb

    def open_tensorboard(self, purge_step: int | None) -> None:
        """Start TensorBoard logging, dropping events after `purge_step` left by an interrupted run."""
        if self.enabled:
            self._writer(purge_step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        writer = self._writer()
        if writer is not None:
            for key, value in record.items():
                if key not in ("kind", "iteration", "epoch") and isinstance(value, (int, float)):
                    writer.add_scalar(f"{record['kind']}/{key}", value, record["iteration"])

    def flush(self) -> None:
        if not self.enabled:
            return
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def plot(self) -> Path | None:
        """`curves.png`: training loss, accuracy (train and validation top-1) and learning rate."""
        if not self.enabled or not self.records:
            return None
        train = [r for r in self.records if r["kind"] == "train"]
        val = [r for r in self.records if r["kind"] == "val"]
        fig, axes = figure(1, 3, (15, 4))
        ax_loss, ax_acc, ax_lr = axes
        if train:
            its = [r["iteration"] for r in train]
            ax_loss.plot(its, [r["loss"] for r in train], label="train loss")
            ax_acc.plot(its, [r["top1"] for r in train], label="train top-1 (clips)")
            ax_lr.plot(its, [r["lr"] for r in train])
        if val:
            ax_acc.plot([r["iteration"] for r in val], [r["top1"] for r in val], "o-", label="val top-1 (centre clip)")
        for ax, title in zip(axes, ("loss", "accuracy", "learning rate")):
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        ax_loss.legend()
        ax_acc.legend()
        ax_acc.set_ylim(0, 1)
        path = self.work_dir / "curves.png"
        save_png(fig, path)
        return path


def _csv_text(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def write_test_reports(
    result: EvalResult, out_dir: str | Path, class_names: list[str] | None = None,
    video_paths: list[str] | None = None,
) -> list[Path]:
    """Write `metrics.json`, `per_class_accuracy.csv`, `predictions.csv` and `confusion_matrix.png`.

    Args:
        result: the evaluation.
        out_dir: the folder to write into (created).
        class_names: names by class index (default: the indices).
        video_paths: the dataset's video paths by video index, for the predictions file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = class_names or [str(i) for i in range(result.num_classes)]
    written = []

    metrics = {**result.metrics(), "average": result.average}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    written.append(out / "metrics.json")

    recalls = result.per_class_accuracy()
    counts = np.bincount(result.labels, minlength=result.num_classes)
    rows = [[c, names[c], int(counts[c]), _fmt(float(recalls[c]))] for c in range(result.num_classes)]
    atomic_write_text(out / "per_class_accuracy.csv", _csv_text(["class", "name", "videos", "accuracy"], rows))
    written.append(out / "per_class_accuracy.csv")

    top5 = np.argsort(-result.scores, axis=1, kind="stable")[:, :5]
    rows = []
    for n, (i, y, p) in enumerate(zip(result.video_indices, result.labels, result.preds)):
        path = video_paths[i] if video_paths is not None else ""
        rows.append([int(i), path, int(y), names[y], int(p), names[p], f"{result.scores[n, p]:.6f}",
                     " ".join(str(int(c)) for c in top5[n])])
    header = ["video", "path", "label", "label_name", "pred", "pred_name", "pred_score", "top5"]
    atomic_write_text(out / "predictions.csv", _csv_text(header, rows))
    written.append(out / "predictions.csv")

    written.append(plot_confusion(result.confusion_matrix(), names, out / "confusion_matrix.png"))
    return written


def plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across) as a PNG."""
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = min(24.0, max(5.0, 0.18 * n + 3))
    fig, axes = figure(1, 1, (size, size))
    ax = axes[0]
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (row-normalised)")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_png(fig, path)
    return path
