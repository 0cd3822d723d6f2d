"""Tiny generated datasets and configs shared by the engine tests (a helper module: no tests in it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from c3dnet.engine.config import TrainConfig

TINY_OVERRIDES = [
    "model.width_mult=0.125", "model.fc_dim=32", "model.clip_len=8", "model.crop_size=32", "model.dropout=0.2",
    "preprocess.short_side=36", "preprocess.std=[64, 64, 64]",
    "data.batch_size=4", "data.val_batch_size=8", "data.workers=0",
    "optim.lr=0.01", "optim.warmup_iters=3", "optim.epochs=3", "optim.head_lr_mult=5.0",
    "train.checkpoint_every=2", "train.log_every=1",
    "train.progress=false", "train.tensorboard=false", "train.plots=false",
]


def tiny_train_config(*extra: str) -> TrainConfig:
    return TrainConfig().with_overrides([*TINY_OVERRIDES, *extra])


def make_frame_dataset(root: Path, num_classes: int = 3, train_per_class: int = 6, test_per_class: int = 2,
                       num_frames: int = 10, seed: int = 0, size_hw: tuple[int, int] = (36, 40)) -> Path:
    """A prepared frame dataset (`classes.txt`, `{train,test}_split1.txt` lines `frame_dir total_frames label`):
    class c is a noisy frame whose colour channel c is bright and that drifts rightwards by c pixels per frame."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(num_classes)))
    for subset, per_class in (("train", train_per_class), ("test", test_per_class)):
        lines = []
        for c in range(num_classes):
            for v in range(per_class):
                rel = f"frames/{subset}_c{c}_v{v}"
                folder = root / rel
                folder.mkdir(parents=True, exist_ok=True)
                base = rng.integers(0, 90, size=(*size_hw, 3)).astype(np.uint8)
                base[..., c % 3] += 150
                for t in range(num_frames):
                    frame = np.roll(base, shift=c * t, axis=1)
                    Image.fromarray(frame).save(folder / f"img_{t + 1:05d}.jpg", quality=95)
                lines.append(f"{rel} {num_frames} {c}\n")
        (root / f"{subset}_split1.txt").write_text("".join(lines))
    return root


def tiny_test_setup(root: Path, seed: int, names: list[str]) -> tuple[Path, Path]:
    """A 3-class frame dataset (2 test videos a class) and a tiny model's weights for it: (data, weights)."""
    import torch

    from c3dnet.model import C3D
    from c3dnet.weights import save_model
    from tests.conftest import tiny_config

    data = make_frame_dataset(root / "data", train_per_class=1, test_per_class=2, num_frames=20)
    torch.manual_seed(seed)
    model = C3D(tiny_config(num_classes=len(names)), preprocess=tiny_train_config().preprocess_record(),
                class_names=names)
    save_model(model, root / "tiny.safetensors")
    return data, root / "tiny.safetensors"
