"""Training and testing: typed configs, the training loop, the inference core, multi-clip evaluation.

`runner.ClipRunner` runs every model (test, validation, predict, extract); `evaluate` aggregates clip scores per
video; `testing.test_weights` is the 10-clip test; `train.train` the training loop (`train_one_epoch`).

Example:
    >>> from c3dnet.engine import load_config, train, test_weights          # doctest: +SKIP
    >>> result = train(load_config("configs/c3d_ucf101_seed.yaml"), "data/UCF-101", work_dir="work_dirs/seed")
    >>> test_weights(result.last_path, "data/UCF-101").result.top1           # doctest: +SKIP
"""

from __future__ import annotations

from c3dnet.engine.config import TrainConfig, load_config
from c3dnet.engine.evaluate import ClipAggregator, EvalResult, evaluate
from c3dnet.engine.schedule import LRSchedule
from c3dnet.engine.testing import TestOptions, TestRun, test_weights
from c3dnet.engine.train import NonFiniteLossError, TrainResult, train
from c3dnet.metrics import mean_class_accuracy, per_class_accuracy, topk_accuracy  # re-exported: c3dnet.metrics

__all__ = [
    "ClipAggregator",
    "EvalResult",
    "LRSchedule",
    "NonFiniteLossError",
    "TestOptions",
    "TestRun",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_config",
    "mean_class_accuracy",
    "per_class_accuracy",
    "test_weights",
    "topk_accuracy",
    "train",
]
