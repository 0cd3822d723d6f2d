"""How an extraction computes its recipe (`ExtractOptions`), and what it did (`ExtractSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.inference.runner import ClipRunner


@dataclass(frozen=True)
class ExtractOptions:
    """How `extract` computes what its recipe says.

    Attributes:
        recipe: what each video's rows are (`inference.recipe.FeatureRecipe`: layer, stride, fps, pooling, l2).
        source_fps: the frame rate of frame folders without recorded timestamps (needed with the recipe's fps).
        batch_size: clips per forward pass; batches mix clips of several videos.
        workers: decoder processes (each decodes one video at a time); 1 suits the CPU, where the model needs
            every core, one per spare core a GPU.
        skip_bad: record unreadable videos in failed.txt and go on, instead of stopping with a `DataError`.
        chunk: frames per decoded chunk.
        weights: the weights' path, recorded in the manifest.
        autorotate: turn frames as each video's display matrix says (FFmpeg's default); False keeps the coded
            orientation. The manifest records what was applied.
    """

    recipe: FeatureRecipe = FeatureRecipe()
    source_fps: Fraction | None = None
    batch_size: int = 32
    workers: int = 1
    skip_bad: bool = False
    chunk: int = 64
    weights: str = ""
    autorotate: bool = True

    def settings(self, runner: ClipRunner) -> dict[str, Any]:
        """What makes two extractions of a video give different arrays (all recorded in the manifest)."""
        if runner.output != self.recipe.layer:
            raise ValueError(f"the runner computes {runner.output} but the recipe asks for {self.recipe.layer}: "
                             f"make the runner for the recipe's layer (ClipRunner(model, recipe.layer))")
        pre = runner.preprocess
        return {**self.recipe.settings(), "dim": runner.dim, "clip_len": pre.clip_len,
                "frame_interval": pre.frame_interval}


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
