"""PNG plots through matplotlib's object API: a `Figure` on the Agg canvas, written atomically.

Nothing here touches pyplot or the global backend, so c3dnet's plots never switch a notebook's backend and
never pile up as open pyplot figures.

Example:
    >>> fig, (ax,) = figure(1, 1, (4, 3))
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> save_png(fig, "line.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from c3dnet.fileio import atomic_write_bytes


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 6), dpi: int = 100) -> tuple[Any, np.ndarray]:
    """A new `Figure` on the Agg canvas and its axes as a flat array (rows * cols,)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols)
    return fig, np.atleast_1d(axes).reshape(-1)


def save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Lay out `fig` and write it as a PNG at `path`, atomically (a reader never sees half an image)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def colormap(name: str) -> Any:
    """A matplotlib colormap by name, without pyplot."""
    import matplotlib

    return matplotlib.colormaps[name]
