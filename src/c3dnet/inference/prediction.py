"""Classifying videos: the reference's multi-clip test per video, and a per-clip timeline for long videos.

`predict_video` takes `num_clips` evenly spaced clips (the seed's 10-clip test sampling), centre-crops them as
the weights' preprocessing says, averages the clip logits and applies softmax. `predict_timeline` slides over the
whole video (stride 16 by default, streaming, bounded memory) and gives every clip's probabilities.

Example:
    >>> from c3dnet.inference.runner import ClipRunner
    >>> from c3dnet.inference.prediction import predict_video
    >>> runner = ClipRunner(model, "logits", device)                      # doctest: +SKIP
    >>> p = predict_video(runner, "v_Drumming_g01_c01.avi", class_names)  # doctest: +SKIP
    >>> p.top_k[0].label, p.top_k[0].prob                                 # doctest: +SKIP
    ('Drumming', 0.93)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from c3dnet.data.decode import ArrayVideo, as_source
from c3dnet.fileio import atomic_write_text
from c3dnet.inference.clips import ClipPlan, clip_batches
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import get_logger
from c3dnet.metrics import Average, average_clips, softmax

log = get_logger(__name__)


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "prob": self.prob}


@dataclass(frozen=True)
class Prediction:
    """A video's class probabilities (num_classes,) from its averaged clip logits, and the clips used."""

    video: str
    probs: np.ndarray
    clip_starts: list[int]
    num_frames: int
    class_names: list[str]

    def top_k(self, k: int = 5) -> list[ClassScore]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [ClassScore(self.class_names[i], int(i), float(self.probs[i])) for i in order]

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        """The `c3d predict --json` record: {"video": ..., "top_k": [{"label", "index", "prob"}, ...]}."""
        return {"video": self.video, "top_k": [c.to_dict() for c in self.top_k(k)]}


def class_labels(model_class_names: list[str] | None, num_classes: int) -> list[str]:
    """The weights' class names, or "class k" when the file has none."""
    if model_class_names is not None and len(model_class_names) == num_classes:
        return list(model_class_names)
    return [f"class {i}" for i in range(num_classes)]


def predict_video(runner: ClipRunner, video: str | os.PathLike[str] | ArrayVideo, class_names: list[str],
                  num_clips: int = 10, average: Average = "score", autorotate: bool = True,
                  fps: Fraction | None = None, source_fps: Fraction | None = None) -> Prediction:
    """Class probabilities of a video from `num_clips` evenly spaced clips, cut as `c3d test` cuts them
    (`ClipDataset` in test mode): the softmax of the mean clip logits ("score", the reference's test protocol), or
    the mean of the clips' softmax ("prob", mmaction2's). `video` is a path or an `ArrayVideo`; with `fps` the
    clips are chosen among its frames sampled at that rate (`data.timing`)."""
    from c3dnet.data.dataset import ClipDataset
    from c3dnet.data.sources import VideoRecord

    source = as_source(video)  # a file becomes a `Video`; a `Video` (an upload's) keeps its own limits
    dataset = ClipDataset([VideoRecord(source, -1)], "test", runner.preprocess, num_clips=num_clips,
                          autorotate=autorotate, fps=fps, source_fps=source_fps)
    sample = dataset.sample(0)
    logits = runner(sample.clips)  # (K, C)
    scores = average_clips(logits, average)  # (C,) mean logits, or mean probabilities
    probs = softmax(scores) if average == "score" else scores
    return Prediction(video=str(video), probs=probs, clip_starts=sample.indices[:, 0].tolist(),
                      num_frames=sample.num_frames, class_names=class_names)


@dataclass(frozen=True)
class Timeline:
    """Per-clip class probabilities (num_clips, num_classes) of sliding clips over a whole video."""

    video: str
    fps: float
    num_frames: int
    clip_starts: np.ndarray  # first source frame of each clip
    clip_span: int  # frames covered by one clip
    probs: np.ndarray
    class_names: list[str]
    spans: np.ndarray  # (num_clips, 4): first, last source frame, start, end s (NaN: unknown; `ClipPlan.spans`)
    sample_fps: str = ""  # the --fps the clips were cut at ("": the video's own frames)

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        clips = []
        for c, p in enumerate(self.probs):
            order = np.argsort(-p, kind="stable")[:k]
            first, last, start_s, end_s = self.spans[c]
            clips.append({
                "start_frame": int(first),
                "end_frame": int(last),
                "time_s": None if np.isnan(start_s) else round(float(start_s), 6),
                "end_s": None if np.isnan(end_s) else round(float(end_s), 6),
                "top_k": [{"label": self.class_names[i], "index": int(i), "prob": float(p[i])} for i in order],
            })
        return {"video": self.video, "fps": self.fps, "num_frames": self.num_frames, "clip_span": self.clip_span,
                "sample_fps": self.sample_fps, "clips": clips}


def predict_timeline(runner: ClipRunner, path: str | os.PathLike[str], class_names: list[str], stride: int = 16,
                     batch_size: int = 32, autorotate: bool = True, fps: Fraction | None = None,
                     source_fps: Fraction | None = None) -> Timeline:
    """Softmax of every sliding clip (every `stride` frames; of the frames sampled at `fps` when given),
    decoding the video once in bounded memory."""
    from c3dnet.data.decode import video_info

    pre = runner.preprocess
    info = video_info(path, autorotate)
    size = pre.resize_target(info.height, info.width)
    plan = ClipPlan.of(path, info.num_frames, pre, stride, fps, source_fps)
    probs = [softmax(runner(clips)) for clips in clip_batches(path, plan, pre, size, batch_size, autorotate)]
    span = (pre.clip_len - 1) * pre.frame_interval + 1
    return Timeline(video=str(path), fps=info.fps, num_frames=info.num_frames, clip_starts=plan.indices[:, 0],
                    clip_span=span, probs=np.concatenate(probs), class_names=class_names, spans=plan.spans(),
                    sample_fps=str(fps) if fps is not None else "")


def save_timeline(timeline: Timeline, out_dir: str | os.PathLike[str], key: str, k: int = 5,
                  classes_in_plot: int = 5) -> tuple[Path, Path]:
    """Write `<key>.timeline.json` and `<key>.timeline.png` (the most probable classes over time)."""
    import json

    from c3dnet.plots import figure, save_png

    out_dir = Path(out_dir)
    json_path, png_path = out_dir / f"{key}.timeline.json", out_dir / f"{key}.timeline.png"
    atomic_write_text(json_path, json.dumps(timeline.to_dict(k), indent=1) + "\n")
    spans = timeline.spans  # (clips, 4): first, last frame, start, end s
    timed = not np.isnan(spans[:, 2:]).any()
    x, unit = ((spans[:, 2] + spans[:, 3]) / 2, "time (s)") if timed else ((spans[:, 0] + spans[:, 1]) / 2, "frame")
    shown = np.argsort(-timeline.probs.mean(axis=0), kind="stable")[:classes_in_plot]
    fig, (ax,) = figure(1, 1, (10, 4))
    for i in shown:
        ax.plot(x, timeline.probs[:, i], marker="o" if len(x) < 50 else None, markersize=3,
                label=timeline.class_names[i])
    ax.set_xlabel(f"clip centre, {unit}")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(Path(timeline.video).name)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    save_png(fig, png_path)
    return json_path, png_path
