"""Plots are PNGs drawn on their own Agg canvas: matplotlib's global backend and pyplot stay untouched."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image

from c3dnet.engine.reports import plot_confusion
from c3dnet.inference.prediction import Timeline, save_timeline
from c3dnet.plots import figure, save_png
from c3dnet.probe import tsne_plot


def test_plots_leave_the_backend_and_pyplot_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's own choice, which c3dnet must not change
    try:
        plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "cm.png")
        rng = np.random.default_rng(0)
        tsne_plot(rng.normal(size=(12, 5)), np.repeat([0, 1, 2], 4), tmp_path / "tsne.png", ["x", "y", "z"])
        starts = np.array([0, 16, 32, 48])
        spans = np.stack([starts, starts + 15, starts / 25, (starts + 16) / 25], axis=1)  # frames, seconds
        tl = Timeline("v.mp4", 25.0, 64, starts, 16, rng.dirichlet(np.ones(3), 4), ["x", "y", "z"], spans)
        save_timeline(tl, tmp_path, "v")
        assert matplotlib.get_backend() == "svg"
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []  # no pyplot figure was opened (and left open)
    finally:
        matplotlib.use(before)
    for name, size in (("cm.png", None), ("tsne.png", (800, 800)), ("v.timeline.png", (1000, 400))):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and (size is None or im.size == size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something was drawn


def test_save_png_is_atomic_and_complete(tmp_path):
    fig, (ax,) = figure(1, 1, (2, 2))
    ax.plot([0, 1], [0, 1])
    save_png(fig, tmp_path / "x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary left beside it
    with Image.open(tmp_path / "x.png") as im:
        assert im.size == (200, 200)
