"""Weight files: the native format, importers for every foreign layout, safety and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from c3dnet.weights import load_model

DATA = Path(__file__).parent / "data" / "weights"


def test_real_paddle_file_reproduces_paddle_logits() -> None:
    # Written by PaddlePaddle 3.3.1 itself (tests/data/weights/make_paddle_fixture.py), seed-style key names.
    model = load_model(DATA / "paddle_tiny.pdparams")
    assert model.source_format == "paddle"
    assert model.config.temporal_depths == (3, 3, 3, 1, 1) and model.config.fc_dim == 12
    x = torch.from_numpy(np.load(DATA / "paddle_tiny_input.npy").astype(np.float32))
    expected = np.load(DATA / "paddle_tiny_logits.npy")
    with torch.no_grad():
        logits = model(x).numpy()
    assert np.abs(logits - expected).max() / np.abs(expected).max() < 1e-4
