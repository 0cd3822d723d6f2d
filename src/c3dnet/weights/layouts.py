"""Key layouts of C3D weights in the wild, mapped onto c3dnet's module names, and config inference from shapes.

| layout      | conv1a / conv5b                    | fc6, fc7                   | classifier              |
|-------------|------------------------------------|----------------------------|-------------------------|
| c3dnet      | conv1a ... conv5b                  | fc6, fc7                   | head                    |
| mmaction2   | [backbone.]conv1a.conv ...         | [backbone.]fc6, fc7        | cls_head.fc_cls         |
| paddle      | [backbone.]conv1a._conv ...        | [backbone.]fc6, fc7 [in,out] | cls_head.fc_cls [in,out] |
| caffe       | conv1, conv2, conv3a ... conv5b    | fc6, fc7                   | fc8 (487 Sports-1M)     |
| sequential  | features.{0,3,6,8,11,13,16,18}     | classifier.{0,3}           | classifier.6            |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from c3dnet.errors import WeightsError
from c3dnet.model import BASE_WIDTHS, CONV_NAMES, C3DConfig, pool5_grid
from c3dnet.preprocess import CAFFE_PREPROCESS, SEED_PREPROCESS, Preprocess

CONV_MODULES: tuple[str, ...] = tuple(name for group in CONV_NAMES for name in group)
MODULES: tuple[str, ...] = (*CONV_MODULES, "fc6", "fc7", "head")
_LINEAR_MODULES = ("fc6", "fc7", "head")
# DataParallel / DistributedDataParallel and some trainers prefix every key; the prefix carries no meaning.
_OUTER_PREFIXES = ("module.", "model.")


@dataclass(frozen=True)
class Layout:
    """One key layout: where each c3dnet module lives in the file, and what the format implies.

    Attributes:
        name: short name recorded as the weights' source format.
        modules: c3dnet module name -> module name in the file (without the backbone prefix).
        backbone_prefix: prefix that full-recognizer files put before backbone modules (may be absent).
        linear_in_out: Linear weights stored [in, out] (Paddle), transposed on import.
        caffe: weights converted from Caffe C3D: imply Caffe pool5 and Caffe preprocessing.
    """

    name: str
    modules: dict[str, str]
    backbone_prefix: str = ""
    linear_in_out: bool = False
    caffe: bool = False

    def file_key(self, module: str, param: str, prefixed: bool) -> str:
        name = self.modules[module]
        if prefixed and module != "head":
            name = self.backbone_prefix + name
        return f"{name}.{param}"

    @property
    def preprocess(self) -> Preprocess:
        return CAFFE_PREPROCESS if self.caffe else SEED_PREPROCESS


def _same_names(head: str) -> dict[str, str]:
    return {**{m: m for m in CONV_MODULES}, "fc6": "fc6", "fc7": "fc7", "head": head}


C3DNET = Layout("c3dnet", _same_names("head"))
MMACTION2 = Layout(
    "mmaction2",
    {**{m: f"{m}.conv" for m in CONV_MODULES}, "fc6": "fc6", "fc7": "fc7", "head": "cls_head.fc_cls"},
    backbone_prefix="backbone.",
)
PADDLE = Layout(
    "paddle",
    {**{m: f"{m}._conv" for m in CONV_MODULES}, "fc6": "fc6", "fc7": "fc7", "head": "cls_head.fc_cls"},
    backbone_prefix="backbone.",
    linear_in_out=True,
)
CAFFE = Layout("caffe", {**_same_names("fc8"), "conv1a": "conv1", "conv2a": "conv2"}, caffe=True)
SEQUENTIAL = Layout(
    "sequential",
    {
        **{m: f"features.{i}" for m, i in zip(CONV_MODULES, (0, 3, 6, 8, 11, 13, 16, 18))},
        "fc6": "classifier.0",
        "fc7": "classifier.3",
        "head": "classifier.6",
    },
)
LAYOUTS: tuple[Layout, ...] = (C3DNET, MMACTION2, PADDLE, CAFFE, SEQUENTIAL)


@dataclass(frozen=True)
class Mapped:
    """A file's tensors under c3dnet key names, plus what did not map."""

    layout: Layout
    state: dict[str, torch.Tensor]
    unexpected: tuple[str, ...]


@dataclass(frozen=True)
class LayoutPlan:
    """Where each c3dnet tensor is in a file, worked out from the key names alone.

    Attributes:
        layout: the detected layout.
        keys: file key -> (c3dnet key, transpose it): Paddle's Linear weights are [in, out].
        unexpected: file keys that map to no C3D parameter.
    """

    layout: Layout
    keys: dict[str, tuple[str, bool]]
    unexpected: tuple[str, ...]


def _outer_prefix(keys: list[str]) -> str:
    for prefix in _OUTER_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def plan_layout(source: str, shapes: dict[str, tuple[int, ...]]) -> LayoutPlan:
    """Detect the key layout of a file from its key names (and tensor ranks, for Paddle's transposes).

    Args:
        source: the file name, for error messages.
        shapes: file key -> tensor shape.

    Raises:
        WeightsError: no known layout has its conv1a weight in the file.
    """
    outer = _outer_prefix(list(shapes))
    names = {k[len(outer):]: k for k in shapes}
    best: tuple[int, Layout, bool] | None = None
    for layout in LAYOUTS:
        for prefixed in (False, True) if layout.backbone_prefix else (False,):
            if layout.file_key("conv1a", "weight", prefixed) not in names:
                continue
            hits = sum(layout.file_key(m, p, prefixed) in names for m in MODULES for p in ("weight", "bias"))
            if best is None or hits > best[0]:
                best = (hits, layout, prefixed)
    if best is None:
        examples = ", ".join(
            f"'{f'[{layout.backbone_prefix}]' if layout.backbone_prefix else ''}"
            f"{layout.file_key('conv1a', 'weight', False)}' ({layout.name})"
            for layout in LAYOUTS
        )
        found = ", ".join(repr(k) for k in list(shapes)[:6])
        raise WeightsError(
            f"{source}: unknown key layout: no C3D conv1a weight found. Expected one of {examples}; the file "
            f"has {len(shapes)} tensors, e.g. {found}"
        )
    _, layout, prefixed = best
    keys: dict[str, tuple[str, bool]] = {}
    for module in MODULES:
        for param in ("weight", "bias"):
            name = layout.file_key(module, param, prefixed)
            if name in names:
                file_key = names[name]
                transpose = (layout.linear_in_out and module in _LINEAR_MODULES and param == "weight"
                             and len(shapes[file_key]) == 2)
                keys[file_key] = (f"{module}.{param}", transpose)
    return LayoutPlan(layout, keys, tuple(k for k in shapes if k not in keys))


def map_layout(source: str, tensors: dict[str, torch.Tensor], consume: bool = False,
               dtype: torch.dtype | None = None) -> Mapped:
    """Detect the key layout of `tensors` and return them under c3dnet's names (Paddle Linears transposed).

    Args:
        source: the file name, for error messages.
        tensors: file key -> tensor.
        consume: take the tensors out of `tensors` one by one, so that each original can be freed as soon as
            its mapped (transposed, converted) version exists: the peak memory stays near one copy.
        dtype: convert every mapped tensor to this dtype (None keeps each one's own).

    Raises:
        WeightsError: no known layout has its conv1a weight in the file.
    """
    plan = plan_layout(source, {k: tuple(v.shape) for k, v in tensors.items()})
    state = {}
    for file_key, (key, transpose) in plan.keys.items():
        value = tensors.pop(file_key) if consume else tensors[file_key]
        if transpose:
            value = value.t()  # Paddle's Linear weight is [in, out], PyTorch's [out, in]
        state[key] = value.to(dtype=dtype or value.dtype, memory_format=torch.contiguous_format)
        del value
    return Mapped(plan.layout, state, plan.unexpected)


def expected_shapes(config: C3DConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of `C3D(config)`, in its order, computed without building anything.

    Raises:
        ValueError: the crop is too small for five poolings.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = config.in_channels
    for names, width, depth in zip(CONV_NAMES, config.widths, config.temporal_depths):
        for name in names:
            shapes[f"{name}.weight"] = (width, in_ch, depth, 3, 3)
            shapes[f"{name}.bias"] = (width,)
            in_ch = width
    pool5 = in_ch * math.prod(pool5_grid(config))
    shapes.update({"fc6.weight": (config.fc_dim, pool5), "fc6.bias": (config.fc_dim,),
                   "fc7.weight": (config.fc_dim, config.fc_dim), "fc7.bias": (config.fc_dim,),
                   "head.weight": (config.num_classes, config.fc_dim), "head.bias": (config.num_classes,)})
    return shapes


MAX_UNBACKED_PARAMETERS = 1 << 24
"""Most parameters a file's config may ask for beyond its own tensors (a missing classifier, say): 64 MB."""


def check_architecture(source: str, config: C3DConfig, shapes: dict[str, tuple[int, ...]], describe: str = "",
                       max_unbacked: int | None = MAX_UNBACKED_PARAMETERS) -> dict[str, tuple[int, ...]]:
    """Check tensors (c3dnet keys -> shapes) against `config` before any model is built.

    Every tensor must have the shape `C3D(config)` gives it, and the parameters the file does not hold (and a
    model would allocate and initialise) are bounded by `max_unbacked`: a config of a few bytes cannot ask
    for gigabytes. None skips that bound (for a classifier the caller asked for).

    Returns:
        The model's shapes (`expected_shapes(config)`).

    Raises:
        WeightsError: mismatched shapes (each key named with both shapes), an unusable geometry, or a config
        much larger than the tensors in the file.
    """
    try:
        expected = expected_shapes(config)
    except ValueError as e:
        raise WeightsError(f"{source}: the config does not describe a usable C3D ({e})") from None
    mismatched = [
        f"{key}: file {shape} vs model {expected[key]}"
        for key, shape in shapes.items()
        if key in expected and tuple(shape) != expected[key]
    ]
    if mismatched:
        shown = "; ".join(mismatched[:8]) + (f"; ... ({len(mismatched) - 8} more)" if len(mismatched) > 8 else "")
        raise WeightsError(
            f"{source}: {len(mismatched)} tensor(s) do not fit the model{f' ({describe})' if describe else ''}: "
            f"{shown}. The file is corrupt, or its config does not describe its weights"
        )
    unbacked = sum(math.prod(shape) for key, shape in expected.items() if key not in shapes)
    if max_unbacked is not None and unbacked > max_unbacked:
        missing = ", ".join(key for key in expected if key not in shapes)
        raise WeightsError(
            f"{source}: the config asks for {unbacked:,} parameters that the file does not hold ({missing}); "
            f"at most {max_unbacked:,} are initialised from scratch. The file is incomplete, or its "
            f"config is wrong"
        )
    return expected


# Input geometry cannot be read from the weights, only the pool5 grid it leads to; try the reference
# (16 frames, 112 crop) first, then small multiples of 16 so reduced files get the smallest input that fits.
_CLIP_LENS = (16, 8, 32, 4, 64, 2, 1)
_CROP_SIZES = (112, *range(16, 513, 16))


def _geometry(pool5_dim: int, width: int, pool5: str, prefer: tuple[int, int] = (16, 112)) -> tuple[int, int] | None:
    for clip_len in dict.fromkeys((prefer[0], *_CLIP_LENS)):
        for crop in dict.fromkeys((prefer[1], *_CROP_SIZES)):
            config = C3DConfig(clip_len=clip_len, crop_size=crop, pool5=pool5)  # type: ignore[arg-type]
            try:
                t, h, w = pool5_grid(config)
            except ValueError:
                continue
            if width * t * h * w == pool5_dim:
                return clip_len, crop
    return None


def fit_geometry(source: str, config: C3DConfig, pool5_dim: int) -> C3DConfig:
    """`config` with a clip length and crop size whose pool5 grid gives fc6's `pool5_dim` inputs.

    The config's own geometry is kept when it fits; otherwise the reference (16, 112) and then small sizes
    are tried. Needed when pool5's mode changes (Caffe's ceil mode can shrink the grid) or no metadata exists.
    """
    geometry = _geometry(pool5_dim, config.widths[-1], config.pool5, (config.clip_len, config.crop_size))
    if geometry is None:
        raise WeightsError(
            f"{source}: fc6 takes {pool5_dim} inputs, which is not {config.widths[-1]} channels times any "
            f"{config.pool5} pool5 grid of a clip of {'/'.join(map(str, _CLIP_LENS))} frames and a square crop "
            f"up to 512"
        )
    return config.replace(clip_len=geometry[0], crop_size=geometry[1])


def _shape(source: str, state: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"{source}: missing {key!r}, needed to work out the architecture")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise WeightsError(f"{source}: {key!r} has shape {shape}; expected {ndim} dimensions")
    return shape


def infer_config(source: str, state: dict[str, torch.Tensor], caffe: bool = False,
                 num_classes: int | None = None) -> C3DConfig:
    """Work out the C3DConfig that `state` (c3dnet keys) was trained with, from tensor shapes alone.

    Args:
        source: file name for error messages.
        state: tensors under c3dnet names.
        caffe: use Caffe's ceil-mode pool5.
        num_classes: class count when the file has no classifier.

    Raises:
        WeightsError: shapes that no C3DConfig produces (non-proportional widths, non-3x3 kernels, ...).
    """
    widths, depths = [], []
    in_channels = _shape(source, state, "conv1a.weight", 5)[1]
    prev = in_channels
    for group in CONV_NAMES:
        for name in group:
            out_ch, in_ch, depth, kh, kw = _shape(source, state, f"{name}.weight", 5)
            if (kh, kw) != (3, 3) or in_ch != prev:
                raise WeightsError(
                    f"{source}: {name}.weight has shape {(out_ch, in_ch, depth, kh, kw)}; expected "
                    f"({out_ch}, {prev}, depth, 3, 3) after the previous layer's {prev} channels"
                )
            if name == group[0]:
                widths.append(out_ch)
                depths.append(depth)
            elif (out_ch, depth) != (widths[-1], depths[-1]):
                raise WeightsError(f"{source}: {name}.weight {(out_ch, in_ch, depth, kh, kw)} differs from {group[0]}")
            prev = out_ch
    width_mult = next(
        (m for m in (w / b for w, b in zip(widths, BASE_WIDTHS)) if C3DConfig(width_mult=m).widths == tuple(widths)),
        None,
    )
    if width_mult is None:
        raise WeightsError(
            f"{source}: conv widths {tuple(widths)} are not one multiple of C3D's {BASE_WIDTHS}; "
            f"c3dnet builds only uniformly scaled C3D networks"
        )
    fc_dim, pool5_dim = _shape(source, state, "fc6.weight", 2)
    fc7 = _shape(source, state, "fc7.weight", 2)
    if fc7 != (fc_dim, fc_dim):
        raise WeightsError(f"{source}: fc7.weight has shape {fc7}; expected ({fc_dim}, {fc_dim}) after fc6")
    if "head.weight" in state:
        n_cls, head_in = _shape(source, state, "head.weight", 2)
        if head_in != fc_dim:
            raise WeightsError(f"{source}: classifier weight has shape {(n_cls, head_in)}; expected (N, {fc_dim})")
    else:
        n_cls = num_classes or C3DConfig().num_classes
    try:
        config = C3DConfig(
            num_classes=n_cls,
            width_mult=width_mult,
            fc_dim=fc_dim,
            temporal_depths=tuple(depths),  # type: ignore[arg-type]
            pool5="caffe" if caffe else "padded",
            in_channels=in_channels,
        )
    except ValueError as e:  # e.g. an even or zero temporal depth, a zero width: shapes no C3D has
        raise WeightsError(f"{source}: the tensor shapes describe no C3D ({e})") from None
    return fit_geometry(source, config, pool5_dim)


def feature_size(config: C3DConfig) -> int:
    return config.widths[-1] * math.prod(pool5_grid(config))


__all__ = [
    "LAYOUTS",
    "MAX_UNBACKED_PARAMETERS",
    "Layout",
    "LayoutPlan",
    "Mapped",
    "check_architecture",
    "expected_shapes",
    "feature_size",
    "fit_geometry",
    "infer_config",
    "map_layout",
    "plan_layout",
]
