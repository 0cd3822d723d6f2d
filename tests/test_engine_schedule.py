"""Learning-rate schedules against REFERENCE.md's recipes, with values computed by hand."""

from __future__ import annotations

import pytest
import torch

from c3dnet.engine.schedule import LRSchedule

SEED = LRSchedule(base_lr=1e-3, total_iters=100 * 298, iters_per_epoch=298, schedule="cosine", warmup_iters=300)


@pytest.mark.parametrize(
    "iteration, expected",
    [
        (0, 0.0),  # the warm-up starts from 0
        (1, 1e-3 / 300),
        (150, 5e-4),
        (299, 1e-3 * 299 / 300),
        (300, 1e-3),  # cos(0): the cosine starts at the full lr when the warm-up ends
        (1000, 9.986391626950403e-4),  # 0.5e-3 * (1 + cos(pi * 700 / 29800))
        (300 + 14_900, 5e-4),  # cos(pi / 2): half way through the cosine's count
        (29_799, 2.5171191555761755e-07),  # the last iteration: 0.5e-3 * (1 + cos(pi * 29499 / 29800))
    ],
)
def test_seed_warmup_cosine(iteration: int, expected: float) -> None:
    assert SEED.lr(iteration) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_seed_cosine_is_monotonic_after_warmup() -> None:
    lrs = [SEED.lr(i) for i in range(300, 29_800, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_multistep_mmaction() -> None:
    s = LRSchedule(base_lr=1e-3, total_iters=450, iters_per_epoch=10, schedule="multistep", milestones=(20, 40))
    assert s.lr(0) == pytest.approx(1e-3)
    assert s.lr(199) == pytest.approx(1e-3)  # epoch 19
    assert s.lr(200) == pytest.approx(1e-4)  # epoch 20
    assert s.lr(399) == pytest.approx(1e-4)
    assert s.lr(400) == pytest.approx(1e-5)  # epoch 40
    assert s.lr(449) == pytest.approx(1e-5)


def test_multistep_with_warmup() -> None:
    s = LRSchedule(base_lr=1e-2, total_iters=100, iters_per_epoch=10, schedule="multistep", warmup_iters=20,
                   milestones=(1,))
    assert s.lr(5) == pytest.approx(1e-2 * 5 / 20)
    assert s.lr(15) == pytest.approx(1e-3 * 15 / 20)  # epoch 1 is past the milestone, still warming up
    assert s.lr(20) == pytest.approx(1e-3)


def test_apply_sets_head_multiplier() -> None:
    w1, w2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w1], "lr_mult": 1.0}, {"params": [w2], "lr_mult": 5.0}], lr=1.0)
    assert SEED.apply(opt, 150) == pytest.approx(5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 2.5e-3])


def test_bad_schedule_name() -> None:
    with pytest.raises(ValueError, match="cosine"):
        LRSchedule(base_lr=1.0, total_iters=1, iters_per_epoch=1, schedule="step")
