"""Training checkpoints: the model in the native weight format for users, and a resumable training state.

`<work_dir>/last.safetensors` (written at epoch ends) and `best.safetensors` (best validation top-1) are
ordinary native weight files (`c3d test --weights`, `c3dnet.weights.load_model`). `<work_dir>/last.state.pt`
(epoch ends and every `train.checkpoint_every` iterations) holds everything `--resume` needs in one file, so
nothing can disagree: model and optimiser tensors (SGD momentum), the iteration (which fixes the epoch and
the learning rate), the best metric and the RNG states of python, numpy, torch and CUDA of every rank.
There is no gradient-scaler state: CUDA runs bf16 autocast, whose range needs no loss scaling.
Every file is written atomically (temporary file, fsync, rename): a crash at any moment leaves the previous
complete checkpoint. The training loop copies the tensors to the host and leaves the writing to a thread, so
the disk does not hold up training. The state holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write

STATE_FORMAT = "c3dnet-train-state-v1"


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy (legacy global), torch and CUDA as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - restoring the global state is the point
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically (tensors moved to the CPU)."""
    state = {"format": STATE_FORMAT, **state}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by `save_state` (weights_only: no code from the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no training state to resume from; start without --resume or pick the work dir "
                           "of an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise WeightsError(f"{path}: unreadable training state ({type(e).__name__}: {e}); delete it to restart "
                           "from the beginning") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise WeightsError(f"{path}: not a c3dnet training state (expected format {STATE_FORMAT})")
    return state


def save_model_file(model: torch.nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """The model in the native format (safetensors + metadata), atomically, via `c3dnet.weights.save_model`."""
    from c3dnet.weights import save_model

    save_model(model, path, extra=extra)
