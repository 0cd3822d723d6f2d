"""What an extraction computes and how (`ExtractOptions`), and what it did (`ExtractSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from c3dnet.engine.runner import ClipRunner


@dataclass(frozen=True)
class ExtractOptions:
    """What `extract` computes and how.

    Attributes:
        stride: frames between consecutive clip starts (16: non-overlapping clips, as the paper).
        video_mean: store the mean over clips (dim,) instead of every clip's row (num_clips, dim).
        l2: "none", "clip" (each clip row, before any pooling) or "output" (each written row: after the segment
            or video mean, as the paper). True and False, as before, mean "output" and "none".
        segments: store this many segment rows (`features.pooling`), 0: none.
        segment_rule: "uniform" or "sultani" (`features.pooling`).
        fps: sample each video at this frame rate by presentation time before forming clips (None: its own).
        source_fps: the frame rate of frame folders without recorded timestamps (needed with `fps`).
        batch_size: clips per forward pass; batches mix clips of several videos.
        workers: decoder processes (each decodes one video at a time); 1 suits the CPU, where the model needs
            every core, one per spare core a GPU.
        skip_bad: record unreadable videos in failed.txt and go on, instead of stopping with a `DataError`.
        chunk: frames per decoded chunk.
        weights: the weights' path, recorded in the manifest.
        autorotate: turn frames as each video's display matrix says (FFmpeg's default); False keeps the coded
            orientation. The manifest records what was applied.
    """

    stride: int = 16
    video_mean: bool = False
    l2: str | bool = "none"
    segments: int = 0
    segment_rule: str = "uniform"
    fps: Fraction | None = None
    source_fps: Fraction | None = None
    batch_size: int = 32
    workers: int = 1
    skip_bad: bool = False
    chunk: int = 64
    weights: str = ""
    autorotate: bool = True

    def __post_init__(self) -> None:
        from c3dnet.features.pooling import check_pooling, l2_mode

        object.__setattr__(self, "l2", l2_mode(self.l2))
        check_pooling(self.segments, self.segment_rule, self.l2, self.video_mean)

    def settings(self, runner: ClipRunner) -> dict[str, Any]:
        """What makes two extractions of a video give different arrays (all recorded in the manifest)."""
        pre = runner.preprocess
        return {"layer": runner.output, "dim": runner.dim, "clip_len": pre.clip_len,
                "frame_interval": pre.frame_interval, "stride": self.stride, "video_mean": self.video_mean,
                "l2": self.l2, "segments": self.segments,
                "segment_rule": self.segment_rule if self.segments else "",
                "sample_fps": str(self.fps) if self.fps is not None else ""}


@dataclass
class ExtractSummary:
    """What an `extract` run did."""

    done: int = 0
    skipped: int = 0  # already complete
    busy: int = 0  # locked by another live process
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    clips: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0
