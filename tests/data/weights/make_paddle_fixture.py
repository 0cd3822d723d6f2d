"""Writes `paddle_tiny.pdparams`, `paddle_tiny_input.npy` and `paddle_tiny_logits.npy` with real PaddlePaddle.

Run with a throwaway environment that has paddlepaddle (it is not a c3dnet dependency):
    python -m venv /tmp/paddle_venv && /tmp/paddle_venv/bin/pip install paddlepaddle numpy
    /tmp/paddle_venv/bin/python tests/data/weights/make_paddle_fixture.py

The network is written the way the seed (PaddleC3D) writes C3D: convs wrapped as `backbone.<name>._conv`,
Paddle Linear layers (weights [in, out]) `backbone.fc6`, `backbone.fc7`, `cls_head.fc_cls`, pool5 padded
(0, 1, 1), and the state dict saved with `paddle.save(model.state_dict(), path)`. It is tiny (widths /32,
fc 12, 16 frames of 16x16, temporal depths 3-3-3-1-1) so the files stay small; tests/test_weights.py checks
that `c3dnet.weights.load_model` reproduces Paddle's logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

HERE = Path(__file__).resolve().parent
WIDTHS = (2, 4, 8, 16, 16)
DEPTHS = (3, 3, 3, 1, 1)
NAMES = (("conv1a",), ("conv2a",), ("conv3a", "conv3b"), ("conv4a", "conv4b"), ("conv5a", "conv5b"))
FC_DIM, NUM_CLASSES, CLIP_LEN, CROP = 12, 5, 16, 16


class ConvLayer(nn.Layer):
    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self._conv = nn.Conv3D(cin, cout, (depth, 3, 3), padding=(depth // 2, 1, 1))

    def forward(self, x):
        return F.relu(self._conv(x))


class Backbone(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        cin = 3
        for names, width, depth in zip(NAMES, WIDTHS, DEPTHS):
            for name in names:
                self.add_sublayer(name, ConvLayer(cin, width, depth))
                cin = width
        self.fc6 = nn.Linear(cin * 1 * 1 * 1, FC_DIM)  # pool5 of 16x16x16 -> (C, 1, 1, 1)
        self.fc7 = nn.Linear(FC_DIM, FC_DIM)

    def forward(self, x):
        for stage, names in enumerate(NAMES):
            for name in names:
                x = getattr(self, name)(x)
            if stage == 0:
                x = F.max_pool3d(x, (1, 2, 2), (1, 2, 2))
            elif stage < 4:
                x = F.max_pool3d(x, 2, 2)
            else:
                x = F.max_pool3d(x, 2, 2, padding=(0, 1, 1))
        x = paddle.flatten(x, 1)
        x = F.relu(self.fc6(x))
        return F.relu(self.fc7(x))


class Head(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.fc_cls = nn.Linear(FC_DIM, NUM_CLASSES)

    def forward(self, x):
        return self.fc_cls(x)


class Recognizer(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.cls_head = Head()

    def forward(self, x):
        return self.cls_head(self.backbone(x))


def main() -> None:
    paddle.seed(1234)
    model = Recognizer()
    rng = np.random.default_rng(1234)
    for name, param in model.named_parameters():
        if name.endswith("bias"):  # Paddle starts biases at zero; random ones make the check stronger
            param.set_value(rng.uniform(0.0, 0.2, param.shape).astype("float32"))
    model.eval()
    x = rng.normal(0.0, 1.0, (2, 3, CLIP_LEN, CROP, CROP)).astype("float16")  # float16 keeps the file small
    logits = model(paddle.to_tensor(x.astype("float32"))).numpy()
    paddle.save(model.state_dict(), str(HERE / "paddle_tiny.pdparams"))
    np.save(HERE / "paddle_tiny_input.npy", x)
    np.save(HERE / "paddle_tiny_logits.npy", logits)
    print("logits", logits)


if __name__ == "__main__":
    main()
