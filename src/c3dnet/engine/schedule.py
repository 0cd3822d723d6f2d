"""Learning-rate schedules, evaluated per iteration from a closed form (so resuming needs only the iteration).

Iteration `i` (0-based, the i-th optimiser step of the run) uses `LRSchedule.lr(i)`:

- "cosine", the seed's (PaddleVideo's `LinearWarmup` wrapped around `CosineAnnealingDecay`, stepped per
  iteration), with W = `warmup_iters` and N = `total_iters` (epochs x iterations per epoch):
      i <  W:  lr(i) = base_lr * i / W                                   (linear from 0; lr(0) = 0)
      i >= W:  lr(i) = base_lr * 0.5 * (1 + cos(pi * (i - W) / N))      (cosine over all N iterations)
  The cosine restarts its count after the warm-up, as PaddleVideo's LinearWarmup does, so at the last
  iteration it has covered (N - W) / N of its half period (for the seed, 9,537 videos in batches of 32 with
  the last partial batch dropped: N = 100 x 298 = 29,800 and the final lr is 2.5e-4 x base_lr, not 0).
- "multistep", mmaction2's: lr(i) = base_lr * gamma ** (number of milestones <= epoch(i)),
  epoch(i) = i // iters_per_epoch, multiplied during warm-up (i < W) by i / W.

Example:
    >>> s = LRSchedule(base_lr=1e-3, total_iters=29_800, iters_per_epoch=298, warmup_iters=300)
    >>> s.lr(0), s.lr(150), s.lr(300)
    (0.0, 0.0005, 0.001)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LRSchedule:
    """A per-iteration learning-rate schedule (see the module docstring for the formulas)."""

    base_lr: float
    total_iters: int
    iters_per_epoch: int
    schedule: str = "cosine"
    warmup_iters: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "multistep"):
            raise ValueError(f"schedule must be 'cosine' or 'multistep', got {self.schedule!r}")
        if self.total_iters < 1 or self.iters_per_epoch < 1:
            raise ValueError(f"total_iters and iters_per_epoch must be >= 1, got {self.total_iters}, "
                             f"{self.iters_per_epoch}")

    def lr(self, iteration: int) -> float:
        w = self.warmup_iters
        if self.schedule == "cosine":
            if iteration < w:
                return self.base_lr * iteration / w
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (iteration - w) / self.total_iters))
        epoch = iteration // self.iters_per_epoch
        lr = self.base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if iteration < w:
            lr *= iteration / w
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's lr to `lr(iteration) * group["lr_mult"]`; return the base lr."""
        lr = self.lr(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr
