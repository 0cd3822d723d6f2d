"""Shared test fixtures: tiny models and generated data only, all on the CPU."""

from __future__ import annotations

import pytest
import torch

from c3dnet.model import C3D, C3DConfig
from c3dnet.weights import save_model


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


def tiny_config(**overrides) -> C3DConfig:
    """A C3D small enough to run in milliseconds: widths /8, fc 32, 8 frames of 32x32."""
    base = dict(num_classes=5, width_mult=0.125, fc_dim=32, clip_len=8, crop_size=32)
    base.update(overrides)
    return C3DConfig(**base)


@pytest.fixture
def tiny_model() -> C3D:
    return C3D(tiny_config()).eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    """The test module's own `model` fixture saved as a weight file (a module may define its own `weights`)."""
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_model(model, path)
    return path
