"""The demo: its recipe, its metrics, the 2D twin's blindness to time (structural), and the claim at a small size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from c3dnet.cli import main
from c3dnet.data import sampling
from c3dnet.demo import DEMO_DATA, demo_config, format_markdown, reverse_pairs, within_pair_accuracy
from c3dnet.engine.config import load_config
from c3dnet.model import C3D
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_trains_the_packaged_recipe():
    assert load_config(ROOT / "configs" / "synthetic_demo.yaml").to_dict() == demo_config().to_dict()
    m, o, d, t = (getattr(demo_config(), s) for s in ("model", "optim", "data", "train"))
    assert (m.width_mult, m.fc_dim, m.clip_len, m.crop_size, m.dropout) == (0.125, 128, 16, 32, 0.0)
    assert (o.lr, o.epochs, o.warmup_iters, d.batch_size, t.val_every) == (0.01, 24, 30, 16, 0)
    cfg = demo_config(quick=True, overrides=["optim.lr=0.02"])
    assert cfg.optim.lr == 0.02 and cfg.optim.epochs == 30 and cfg.model.variant == "d3"


def test_demo_data_mirrors_the_test_clips():
    assert DEMO_DATA.mirrored_test_clips and DEMO_DATA.pair_test
    assert DEMO_DATA.frames - 16 >= 8  # room for random clip starts; no clip wraps
    np.testing.assert_array_equal(sampling.test_start_frames(DEMO_DATA.frames, 16, 10), np.arange(10))


def test_within_pair_accuracy_by_hand():
    scores = np.array([
        [5.0, 1.0, 9.0, 0.0],   # label 0: pair (0, 1) says 0 -> right (class 2's 9.0 is ignored)
        [5.0, 1.0, 0.0, 0.0],   # label 1: pair says 0 -> wrong
        [0.0, 0.0, 1.0, 2.0],   # label 3: pair (2, 3) says 3 -> right
        [0.0, 0.0, 2.0, 2.0],   # label 2: tie -> the pair's first class, 2 -> right
        [0.0, 0.0, 2.0, 2.0],   # label 3: the same tie -> wrong: a tie is right on exactly one of the two
    ])
    labels = np.array([0, 1, 3, 2, 3])
    assert within_pair_accuracy(scores, labels) == pytest.approx(3 / 5)


def test_reverse_pairs_match_group_and_clip():
    names = ["MoveDown", "MoveUp", "Grow", "Shrink"]
    paths = [Path(f"{c}/v_{c}_{g}.avi") for c, g in
             [("MoveUp", "g01_c02"), ("MoveDown", "g01_c01"), ("MoveDown", "g01_c02"), ("MoveUp", "g01_c01"),
              ("Grow", "g02_c01"), ("Shrink", "g03_c01")]]
    labels = np.array([1, 0, 0, 1, 2, 3])
    assert sorted(reverse_pairs(paths, labels, names)) == [(1, 3), (2, 0)]


def test_2d_twin_scores_a_clip_and_its_reverse_alike():
    x = torch.randn(3, 3, 8, 32, 32)  # (N, C, T, H, W)
    d1 = C3D(tiny_config(temporal_depths=(1, 1, 1, 1, 1))).eval()
    d3 = C3D(tiny_config()).eval()
    with torch.no_grad():
        torch.testing.assert_close(d1(x.flip(2)), d1(x), rtol=1e-5, atol=1e-6)
        assert (d3(x.flip(2)) - d3(x)).abs().max() > 1e-3


def test_2d_twin_is_exactly_at_chance_within_pairs(tmp_path):
    """On the synthetic test split, any depth-1 model (here untrained) gives each video and its exact reverse the
    same 10-clip score, so it is right on exactly one of the two: 50% within pairs, by construction."""
    from c3dnet.data.dataset import ClipDataset
    from c3dnet.data.sources import load_source
    from c3dnet.data.synthetic import SynthParams, class_names, generate_synthetic
    from c3dnet.engine.evaluate import evaluate
    from c3dnet.inference.runner import ClipRunner
    from c3dnet.preprocess import Preprocess

    params = SynthParams(num_pairs=2, videos_per_class=6, groups=3, test_groups=1, height=36, width=36)
    data = generate_synthetic(tmp_path / "data", params, workers=1)
    source = load_source(data, "test")
    config = tiny_config(num_classes=4, clip_len=16, temporal_depths=(1, 1, 1, 1, 1))
    model = C3D(config, Preprocess(mean=(120.0,) * 3, std=(60.0,) * 3, short_side=36, crop_size=32)).eval()
    for p in model.head.parameters():  # a head large enough that the classes' scores are never tied
        torch.nn.init.normal_(p, 0.0, 1.0)
    loader = torch.utils.data.DataLoader(ClipDataset(source.records, "test", model.preprocess, num_clips=10),
                                         batch_size=4)
    result = evaluate(ClipRunner(model, "logits"), loader)
    pairs = reverse_pairs([r.path for r in source.records], result.labels, class_names(2))
    assert len(pairs) == 4  # 2 class pairs x 2 test videos of the first class, each with its reverse
    for a, b in pairs:
        np.testing.assert_allclose(result.scores[a], result.scores[b], rtol=1e-5, atol=1e-5)
        assert result.preds[a] == result.preds[b]
    assert within_pair_accuracy(result.scores, result.labels) == 0.5


@pytest.mark.slow
def test_demo_quick_shows_3d_beats_2d(tmp_path, capsys):
    """The demo's claim at a reduced size: one class pair, 1,500 training clips per model."""
    from c3dnet.model import count_parameters

    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "within-pair accuracy" in table and "3D: C3D" in table
    assert table.splitlines()[-1] == f"report: {tmp_path / 'quick.md'} (the table as Markdown) and " \
                                     f"{tmp_path / 'quick.json'} (every figure)"
    report = json.loads((tmp_path / "quick.json").read_text())
    d3, d1 = report["models"]
    assert (d3["variant"], d1["variant"]) == ("d3", "d1") and d3["reverse_pairs"] == d1["reverse_pairs"] == 10
    # Blind to time, exactly: the same answer for each video and its reverse, right on one of the two.
    assert d1["reverse_same_answer"] == 1.0 and d1["within_pair"] == 0.5 and d1["top1"] == 0.5
    assert d3["top1"] >= 0.8 and d3["reverse_same_answer"] <= 0.3
    cfg = demo_config(quick=True)
    assert d3["parameters"] == count_parameters(C3D(cfg.model_config(2)))
    assert d1["parameters"] == count_parameters(C3D(cfg.with_overrides(["model.variant=d1"]).model_config(2)))
    assert (tmp_path / "quick.md").read_text().startswith("# c3d demo --quick")
    assert Path(d3["weights"]).is_file()


def test_markdown_report_lists_both_models():
    from c3dnet.demo import DemoReport, ModelReport

    def model(name: str, variant: str, top1: float) -> ModelReport:
        return ModelReport(name, variant, 1000, 12.0, 2.0, 0.1, top1, 1.0, top1, top1, top1, 0.0, 50, 100, "w")

    report = DemoReport("data", False, 10, 250, 100, 3.0, 60.0, [model("3D", "d3", 0.97), model("2D", "d1", 0.5)])
    text = format_markdown(report)
    assert "| video top-1 (10 clips) | 97.0% | 50.0% |" in text
    assert report.claim_holds and "reproduced" in text
    report.models[0].top1 = 0.85
    assert not report.claim_holds


@pytest.mark.slow
def test_demo_resolves_workers_auto(tmp_path):
    """`data.workers: auto` is valid config (the default); the demo's test step once handed the string to the
    DataLoader, which failed with a TypeError after both models had trained."""
    from c3dnet.demo import run_demo

    report = run_demo(tmp_path, quick=True, overrides=["data.workers=auto", "optim.epochs=1", "train.plots=false",
                                                       "train.progress=false"])
    assert [m.variant for m in report.models] == ["d3", "d1"]
    assert all(m.num_videos == 20 and 0 <= m.top1 <= 1 for m in report.models)
    assert report.models[1].within_pair == 0.5  # the 2D twin, blind to time whatever its training
