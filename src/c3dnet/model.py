"""C3D (Tran et al., ICCV 2015) and the paper's temporal-depth ablations.

The reference network takes clips of shape (N, 3, 16, 112, 112). Every conv is 3x3x3 with stride 1 and
padding 1 followed by ReLU; pool1 pools space only; pool2..pool5 pool 2x2x2. pool5 has two modes:
"padded" (the seed and mmaction2: padding (0, 1, 1)) and "caffe" (the original Caffe model: ceil mode,
no padding), which give the same shape but different values; Caffe conversions need "caffe".

Example:
    >>> import torch
    >>> from c3dnet.model import C3D, C3DConfig
    >>> model = C3D(C3DConfig(num_classes=101)).eval()
    >>> x = torch.randn(2, 3, 16, 112, 112)              # (N, C, T, H, W)
    >>> model(x).shape
    torch.Size([2, 101])
    >>> model.forward_features(x, layer="fc6").shape    # after ReLU
    torch.Size([2, 4096])
    >>> tiny = C3D(C3DConfig(num_classes=4, width_mult=0.125, fc_dim=64, clip_len=8, crop_size=32))
    >>> variant = C3D(C3DConfig.variant("d1"))          # the 2D baseline: temporal depth 1 everywhere
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from c3dnet.preprocess import Preprocess

FeatureLayer = Literal["pool5", "fc6", "fc7"]
FEATURE_LAYERS: tuple[str, ...] = ("pool5", "fc6", "fc7")

BASE_WIDTHS = (64, 128, 256, 512, 512)
CONV_NAMES = (("conv1a",), ("conv2a",), ("conv3a", "conv3b"), ("conv4a", "conv4b"), ("conv5a", "conv5b"))

# The paper's ablations over the temporal kernel depth of the five conv groups (section 3.2).
TEMPORAL_DEPTHS: dict[str, tuple[int, int, int, int, int]] = {
    "d1": (1, 1, 1, 1, 1),
    "d3": (3, 3, 3, 3, 3),
    "d5": (5, 5, 5, 5, 5),
    "d7": (7, 7, 7, 7, 7),
    "increasing": (3, 3, 5, 5, 7),
    "decreasing": (7, 5, 5, 3, 3),
}


@dataclass(frozen=True)
class C3DConfig:
    """Architecture of a C3D network.

    Attributes:
        num_classes: outputs of the classifier head.
        width_mult: multiplies the conv widths (64, 128, 256, 512, 512); 1.0 is the reference.
        fc_dim: width of fc6 and fc7 (4096 in the reference).
        temporal_depths: temporal kernel depth of each of the five conv groups; (3,)*5 is C3D, (1,)*5 the 2D net.
        clip_len: frames per input clip.
        crop_size: spatial size of the (square) input.
        pool5: "padded" (seed, mmaction2) or "caffe" (ceil mode, no padding; for Caffe conversions).
        dropout: dropout probability after fc6 and before the classifier.
        in_channels: input channels.
    """

    num_classes: int = 101
    width_mult: float = 1.0
    fc_dim: int = 4096
    temporal_depths: tuple[int, int, int, int, int] = (3, 3, 3, 3, 3)
    clip_len: int = 16
    crop_size: int = 112
    pool5: Literal["padded", "caffe"] = "padded"
    dropout: float = 0.5
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "temporal_depths", tuple(int(d) for d in self.temporal_depths))
        if len(self.temporal_depths) != 5:
            raise ValueError(f"temporal_depths needs 5 values (one per conv group), got {self.temporal_depths}")
        if any(d < 1 or d % 2 == 0 for d in self.temporal_depths):
            raise ValueError(f"temporal depths must be odd and >= 1 (to keep T), got {self.temporal_depths}")
        if self.pool5 not in ("padded", "caffe"):
            raise ValueError(f"pool5 must be 'padded' or 'caffe', got {self.pool5!r}")
        if self.num_classes < 1 or self.fc_dim < 1 or self.width_mult <= 0:
            raise ValueError(f"num_classes, fc_dim and width_mult must be positive: {self}")
        if self.clip_len < 1 or self.crop_size < 16:
            raise ValueError(f"clip_len must be >= 1 and crop_size >= 16, got {self.clip_len}, {self.crop_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, int(round(w * self.width_mult))) for w in BASE_WIDTHS)

    @classmethod
    def variant(cls, name: str, **overrides: Any) -> C3DConfig:
        """A config for one of the paper's temporal-depth ablations: d1, d3, d5, d7, increasing, decreasing."""
        if name not in TEMPORAL_DEPTHS:
            raise ValueError(f"unknown variant {name!r}; choose from {sorted(TEMPORAL_DEPTHS)}")
        return cls(temporal_depths=TEMPORAL_DEPTHS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["temporal_depths"] = list(self.temporal_depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> C3DConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown C3D config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> C3DConfig:
        return replace(self, **changes)


def _pool_out(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:  # PyTorch drops a window that starts in the right padding
        out -= 1
    return out


@dataclass(frozen=True)
class _PoolSpec:
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int] = (0, 0, 0)
    ceil_mode: bool = False


def _pool_specs(config: C3DConfig) -> tuple[list[_PoolSpec], tuple[int, int, int]]:
    """Pooling of each of the five stages, and the (T, H, W) left after pool5.

    Temporal pooling shrinks to kernel 1 once only one frame remains, so short clips (tests, the CPU
    demo) still build; at 16 frames this is exactly the reference's pooling.
    """
    t, h, w = config.clip_len, config.crop_size, config.crop_size
    specs = []
    for stage in range(5):
        kt = 1 if stage == 0 or t < 2 else 2
        if stage < 4:
            spec = _PoolSpec((kt, 2, 2), (kt, 2, 2))
        elif config.pool5 == "padded":
            spec = _PoolSpec((kt, 2, 2), (kt, 2, 2), (0, 1, 1))
        else:
            spec = _PoolSpec((kt, 2, 2), (kt, 2, 2), ceil_mode=True)
        t = _pool_out(t, spec.kernel[0], spec.stride[0], spec.padding[0], spec.ceil_mode)
        h = _pool_out(h, 2, 2, spec.padding[1], spec.ceil_mode)
        w = _pool_out(w, 2, 2, spec.padding[2], spec.ceil_mode)
        if min(t, h, w) < 1:
            raise ValueError(f"crop_size {config.crop_size} is too small for five poolings")
        specs.append(spec)
    return specs, (t, h, w)


def pool5_grid(config: C3DConfig) -> tuple[int, int, int]:
    """(T, H, W) left after pool5 for a config: what fc6's input size depends on."""
    return _pool_specs(config)[1]


class C3D(nn.Module):
    """C3D with a timm-style API: `forward_features`, `forward_head`, `forward`, `reset_classifier`.

    The model carries its own metadata: `config` (architecture), `preprocess` (what its input must look like)
    and `class_names` (or None), so saving and loading keep all three with the weights.
    """

    def __init__(
        self,
        config: C3DConfig | None = None,
        preprocess: Preprocess | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or C3DConfig()
        self.preprocess = preprocess or Preprocess(clip_len=config.clip_len, crop_size=config.crop_size)
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(f"{len(class_names)} class names for {config.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None

        in_ch = config.in_channels
        for (names, width, depth) in zip(CONV_NAMES, config.widths, config.temporal_depths):
            for name in names:
                conv = nn.Conv3d(in_ch, width, (depth, 3, 3), padding=(depth // 2, 1, 1))
                self.add_module(name, conv)
                in_ch = width
        self._pools, out_thw = _pool_specs(config)
        self.feature_dims = {"pool5": in_ch * math.prod(out_thw), "fc6": config.fc_dim, "fc7": config.fc_dim}
        self.fc6 = nn.Linear(self.feature_dims["pool5"], config.fc_dim)
        self.fc7 = nn.Linear(config.fc_dim, config.fc_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.fc_dim, config.num_classes)
        self.init_weights()

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one input clip."""
        c = self.config
        return c.in_channels, c.clip_len, c.crop_size, c.crop_size

    def init_weights(self) -> None:
        # He init keeps activations alive through ten ReLU layers without batch norm when training from scratch.
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self._init_head()

    def _init_head(self) -> None:
        nn.init.normal_(self.head.weight, 0.0, 0.01)  # the reference's head init, Normal(0, 0.01)
        nn.init.zeros_(self.head.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = self.input_shape
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            c, t, h, w = expected
            raise ValueError(
                f"C3D expects clips of shape (N, {c}, {t}, {h}, {w}) = (batch, channels, frames, height, width), "
                f"got {tuple(x.shape)}; check the clip length, crop size and channel-first layout"
            )

    def pool(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The max pooling after conv stage `stage` (0-4), with this config's windows (Caffe's ceil mode or padded)."""
        p = self._pools[stage]
        return F.max_pool3d(x, p.kernel, p.stride, p.padding, ceil_mode=p.ceil_mode)

    def forward_pool5(self, x: torch.Tensor) -> torch.Tensor:
        """Conv trunk: (N, C, T, H, W) clip -> (N, D) flattened pool5 output."""
        self._check_input(x)
        for stage, names in enumerate(CONV_NAMES):
            for name in names:
                x = F.relu(getattr(self, name)(x))
            x = self.pool(x, stage)
        return x.flatten(1)  # (N, C5 * T5 * H5 * W5), 8192 in the reference

    def forward_features(self, x: torch.Tensor, layer: FeatureLayer = "fc7") -> torch.Tensor:
        """Backbone features of a clip batch: "pool5" (flattened), "fc6" (after ReLU) or "fc7" (after ReLU).

        In training mode the dropout after fc6 applies on the way to fc7, as in the reference.
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"layer must be one of {FEATURE_LAYERS}, got {layer!r}")
        x = self.forward_pool5(x)
        if layer == "pool5":
            return x
        x = F.relu(self.fc6(x))
        if layer == "fc6":
            return x
        return F.relu(self.fc7(self.dropout(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """fc7 features -> logits (or the dropped-out features fed to the classifier when `pre_logits`)."""
        x = self.dropout(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, "fc7"))

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` outputs (fine-tuning)."""
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        device, dtype = self.head.weight.device, self.head.weight.dtype
        self.head = nn.Linear(self.config.fc_dim, num_classes).to(device=device, dtype=dtype)
        self._init_head()
        self.config = self.config.replace(num_classes=num_classes)
        self.class_names = list(class_names) if class_names is not None else None

    def set_dropout(self, p: float) -> None:
        """Dropout probability after fc6 and before the classifier (a training choice, kept in the config)."""
        self.config = self.config.replace(dropout=p)  # validates p
        self.dropout.p = p

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def multiply_adds(config: C3DConfig) -> int:
    """Multiply-adds of one forward pass of one clip (convs and linear layers; 38.6 G for the reference).

    FLOPs are twice this; a training step (forward + backward) costs about three forward passes.
    """
    t, h, w = config.clip_len, config.crop_size, config.crop_size
    in_ch, total = config.in_channels, 0
    pools, _ = _pool_specs(config)
    for names, width, depth, pool in zip(CONV_NAMES, config.widths, config.temporal_depths, pools):
        for _ in names:
            total += width * in_ch * depth * 9 * t * h * w  # 'same' padding: output size == input size
            in_ch = width
        t = _pool_out(t, pool.kernel[0], pool.stride[0], pool.padding[0], pool.ceil_mode)
        h = _pool_out(h, 2, 2, pool.padding[1], pool.ceil_mode)
        w = _pool_out(w, 2, 2, pool.padding[2], pool.ceil_mode)
    fc_in = in_ch * t * h * w
    return total + fc_in * config.fc_dim + config.fc_dim * config.fc_dim + config.fc_dim * config.num_classes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(
    variant: str = "d3",
    num_classes: int = 101,
    preprocess: Preprocess | None = None,
    class_names: list[str] | None = None,
    **overrides: Any,
) -> C3D:
    """Build a C3D by variant name (see `TEMPORAL_DEPTHS`) with config overrides."""
    config = C3DConfig.variant(variant, num_classes=num_classes, **overrides)
    return C3D(config, preprocess=preprocess, class_names=class_names)


__all__ = [
    "C3D",
    "C3DConfig",
    "FEATURE_LAYERS",
    "TEMPORAL_DEPTHS",
    "build_model",
    "count_parameters",
    "multiply_adds",
    "pool5_grid",
]
