"""Metric functions and multi-clip aggregation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c3dnet.data.transforms import normalize
from c3dnet.engine.evaluate import ClipAggregator, evaluate
from c3dnet.inference.runner import ClipRunner
from c3dnet.metrics import mean_class_accuracy, per_class_accuracy, topk_accuracy
from c3dnet.model import C3D
from tests.conftest import tiny_config

SCORES = np.array([
    [0.1, 0.9, 0.0],  # label 1 is best: rank 0
    [0.5, 0.5, 0.0],  # label 1 ties class 0, which has the lower index: rank 1
    [0.2, 0.3, 0.5],  # label 0 is worst: rank 2
    [0.3, 0.3, 0.3],  # label 2 ties both lower classes: rank 2
])
LABELS = np.array([1, 1, 0, 2])


@pytest.mark.parametrize("k, expected", [(1, 0.25), (2, 0.5), (3, 1.0), (5, 1.0)])
def test_topk_with_ties(k: int, expected: float) -> None:
    assert topk_accuracy(SCORES, LABELS, k) == expected


def test_top1_agrees_with_argmax() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 6)).astype(float)  # many ties
    labels = rng.integers(0, 6, size=200)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(float((scores.argmax(1) == labels).mean()))
    assert topk_accuracy(torch.from_numpy(scores), torch.from_numpy(labels), 1) == topk_accuracy(scores, labels, 1)


def test_mean_class_accuracy_skips_absent_classes() -> None:
    preds = np.array([0, 1, 1, 2, 2])
    labels = np.array([0, 0, 1, 1, 3])  # classes 2 and 4 absent from the split
    recalls = per_class_accuracy(preds, labels, 5)
    assert recalls[[0, 1, 3]].tolist() == [0.5, 0.5, 0.0]
    assert np.isnan(recalls[[2, 4]]).all()
    assert mean_class_accuracy(preds, labels, 5) == pytest.approx(1 / 3)


def _aggregator() -> ClipAggregator:
    agg = ClipAggregator()
    v0 = [[0.0, 20.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]  # one very confident clip against two fair ones
    v1 = [[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]  # logits average to a tie between 0 and 2
    agg.add(torch.tensor([1]), torch.tensor([v1]), torch.tensor([2]))
    agg.add(np.array([0]), np.array([v0]), np.array([0]))
    agg.add(np.array([0]), np.zeros((1, 3, 3)) + [9.0, 0.0, 0.0], np.array([0]))  # sampler padding: dropped
    return agg


def test_aggregator_score_vs_prob_and_padding() -> None:
    score = _aggregator().result("score")
    # video 0: mean logits (10/3, 20/3, 0) -> class 1 (wrong); video 1: (1, 0, 1) -> tie, class 0 (wrong)
    assert score.num_videos == 2 and score.clips_per_video == 3
    assert score.video_indices.tolist() == [0, 1] and score.labels.tolist() == [0, 2]
    np.testing.assert_allclose(score.scores[0], [10 / 3, 20 / 3, 0.0], rtol=1e-6)
    assert score.preds.tolist() == [1, 0] and score.top1 == 0.0
    # probabilities: video 0 -> (0.658, 0.338, 0.004): class 0; video 1 -> (0.409, 0.121, 0.470): class 2
    prob = _aggregator().result("prob")
    assert prob.preds.tolist() == [0, 2] and prob.top1 == 1.0
    e5 = np.exp(5.0) / (np.exp(5.0) + 2)
    assert prob.scores[0, 0] == pytest.approx(2 * e5 / 3, rel=1e-5)
    # clip level: video 0 clips predict (1, 0, 0) for label 0, video 1 (2, 2, 0) for label 2: 4 of 6
    assert score.clip_top1 == pytest.approx(4 / 6) and prob.clip_top1 == pytest.approx(4 / 6)
    assert set(score.metrics()) == {"top1", "top5", "mean_class_accuracy", "clip_top1", "num_videos",
                                    "clips_per_video"}


def test_evaluate_matches_manual_scoring() -> None:
    model = C3D(tiny_config(num_classes=4)).eval()
    g = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (5, 2, 3, 8, 32, 32), dtype=torch.uint8, generator=g)  # (V, K, 3, T, H, W)
    labels = torch.tensor([0, 1, 2, 3, 0])
    # Batches as a padded sampler delivers them: videos 0..4 then a repeat of video 0.
    loader = [(clips[:3], labels[:3], torch.arange(3)), (clips[3:], labels[3:], torch.arange(3, 5)),
              (clips[:1], labels[:1], torch.tensor([0]))]
    result = evaluate(ClipRunner(model, "logits"), loader, average="score")
    with torch.no_grad():
        logits = model(normalize(clips.flatten(0, 1), model.preprocess)).reshape(5, 2, 4)
    expected = logits.mean(1).numpy()
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    assert result.num_videos == 5
    assert result.top1 == pytest.approx(float((expected.argmax(1) == labels.numpy()).mean()))
    assert result.clip_top1 == pytest.approx(float((logits.argmax(2) == labels[:, None]).float().mean()))
