"""Loading any supported weight file into a ready C3D, with a report of what was loaded."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode

from c3dnet.errors import WeightsError, printable
from c3dnet.log import get_logger
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import VOLUME_MEAN_TENSOR, Preprocess, VolumeMean
from c3dnet.weights.files import read_raw
from c3dnet.weights.layouts import check_architecture, fit_geometry, infer_config, map_layout
from c3dnet.weights.native import NATIVE_FORMAT, parse_metadata

log = get_logger(__name__)
Pool5Mode = Literal["padded", "caffe"]


@dataclass(frozen=True)
class WeightFile:
    """A weight file read into c3dnet's terms, before a model is built from it.

    Attributes:
        path: the file.
        state: tensors under c3dnet key names (`conv1a.weight`, ..., `head.bias`).
        config: the architecture (from metadata, or inferred from shapes).
        preprocess: the preprocessing the weights expect (from metadata, or the format's known default).
        class_names: names of the classifier's classes, when the file records them.
        source_format: "c3dnet", "mmaction2", "paddle", "caffe" or "sequential".
        container: "safetensors", "torch" or "pickle".
        unexpected: file keys that map to no C3D parameter (reported, not loaded).
        extra: the native file's "extra" metadata ({} otherwise).
        dropped: the checkpoint's entries beside its weights (mmengine's `meta`, `message_hub`, `optimizer`, ...),
            described; nothing in them was read or run.
    """

    path: Path
    state: dict[str, torch.Tensor]
    config: C3DConfig
    preprocess: Preprocess
    class_names: list[str] | None
    source_format: str
    container: str
    unexpected: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    @property
    def has_head(self) -> bool:
        return "head.weight" in self.state

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state.values())


def read_weights(path: str | os.PathLike[str], *, progress: bool | None = None) -> WeightFile:
    """Read a weight file of any supported format and layout into a `WeightFile` (no model is built).

    `path` may also be a name from `c3d weights list` (an existing path always wins): the file is downloaded
    into the cache, or found there and checked against its recorded SHA-256 (`c3dnet.weights.download`), and
    the entry's class names are used when the file records none. `progress` shows the download's progress bar
    (None: unless c3dnet's logger is quieter than INFO, as `-q` makes it).

    Tensors come back as contiguous float32 under c3dnet's key names. The architecture (from the native
    metadata, or inferred from the shapes) is checked against every tensor before anything else is allocated.

    Raises:
        WeightsError: unreadable, unsafe, truncated, inconsistent, or of an unknown layout; the message names
        the file.
    """
    from c3dnet.weights.download import resolve

    path, entry = resolve(path, progress)
    raw = read_raw(path)
    volume = raw.tensors.pop(VOLUME_MEAN_TENSOR, None) if (raw.metadata or {}).get("format") == NATIVE_FORMAT else None
    # Each original tensor is freed as soon as its float32 version exists: about one copy at any time.
    mapped = map_layout(str(path), raw.tensors, consume=True, dtype=torch.float32)
    metadata = raw.metadata or {}
    shapes = {k: tuple(v.shape) for k, v in mapped.state.items()}
    if metadata.get("format") == NATIVE_FORMAT:
        meta = parse_metadata(path, metadata)
        try:
            config = C3DConfig.from_dict(meta["config"])
            preprocess = Preprocess.from_dict(meta["preprocess"], _volume_mean(path, meta["preprocess"], volume)) \
                if meta["preprocess"] else Preprocess(clip_len=config.clip_len, crop_size=config.crop_size)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: invalid c3dnet metadata ({e}); re-save the file with save_model") from None
        check_architecture(str(path), config, shapes, _describe(config))
        class_names, source_format, extra = meta["class_names"], meta["source_format"], meta["extra"]
    else:
        layout = mapped.layout
        config = infer_config(str(path), mapped.state, caffe=layout.caffe)
        check_architecture(str(path), config, shapes, _describe(config))
        # Foreign files carry no preprocessing: use the format's known one, fitted to the inferred geometry.
        preprocess = Preprocess.from_dict(
            {**layout.preprocess.to_dict(), "clip_len": config.clip_len, "crop_size": config.crop_size}
        )
        class_names, source_format, extra = None, layout.name, {}
        log.info(
            "%s: %s layout (%s container), inferred %s; preprocessing %s mean %s",
            path, layout.name, raw.container, _describe(config), preprocess.channel_order, list(preprocess.mean),
        )
    if class_names is None and entry is not None and entry.class_names and len(entry.class_names) == config.num_classes:
        class_names = list(entry.class_names)
        log.info("%s: class names from the registry entry %s (%s, ...)", path, entry.name, class_names[0])
    if class_names is not None and len(class_names) != config.num_classes:
        raise WeightsError(f"{path}: {len(class_names)} class names for {config.num_classes} classes in the config")
    unexpected = mapped.unexpected + raw.ignored
    if raw.dropped:
        log.info("%s: dropped (only the state dict's tensors are used; nothing else was read or run): %s", path,
                 "; ".join(raw.dropped))
    return WeightFile(path, mapped.state, config, preprocess, class_names, source_format, raw.container,
                      unexpected, extra, raw.dropped)


def _volume_mean(path: Path, described: dict[str, Any] | None, values: torch.Tensor | None) -> VolumeMean | None:
    """The volume mean that a native file's preprocessing describes, from its tensor (checked against it)."""
    wanted = (described or {}).get("volume_mean")
    if wanted is None:
        if values is not None:
            log.warning("%s: a %s tensor that the metadata does not describe; ignored", path, VOLUME_MEAN_TENSOR)
        return None
    if values is None or list(values.shape) != wanted["shape"]:
        raise WeightsError(f"{path}: the preprocessing names a volume mean of shape {wanted['shape']} but the file's "
                           f"{VOLUME_MEAN_TENSOR} tensor is {None if values is None else list(values.shape)}; the file "
                           f"is corrupt, convert the original again")
    try:
        return VolumeMean(values.to(torch.float32).numpy(), wanted["source"])
    except ValueError as e:
        raise WeightsError(f"{path}: unusable volume mean ({e}); convert the original again") from None


def with_geometry_preprocess(weights: WeightFile, preprocess: Preprocess) -> WeightFile:
    """`weights` with `preprocess`, its clip length and crop size set to the model's input geometry."""
    c = weights.config
    if (preprocess.clip_len, preprocess.crop_size) != (c.clip_len, c.crop_size):
        try:
            preprocess = dataclasses.replace(preprocess, clip_len=c.clip_len, crop_size=c.crop_size)
        except ValueError as e:
            raise WeightsError(f"{weights.path}: the preprocessing does not fit the model's input ({e})") from None
    return dataclasses.replace(weights, preprocess=preprocess)


def with_pool5(weights: WeightFile, pool5: Pool5Mode) -> WeightFile:
    """`weights` read with another pool5 mode; the input size is refitted so fc6 still gets its input count.

    For Caffe weights stored under another layout (pool5="caffe"), or to compare Caffe-converted weights
    with padded pooling (pool5="padded").
    """
    if pool5 not in ("padded", "caffe"):
        raise WeightsError(f"pool5 must be 'padded' or 'caffe', got {pool5!r}")
    if pool5 == weights.config.pool5:
        return weights
    if "fc6.weight" not in weights.state:
        raise WeightsError(f"{weights.path}: no fc6.weight, so the input size for pool5={pool5!r} cannot be worked out")
    config = fit_geometry(str(weights.path), weights.config.replace(pool5=pool5), weights.state["fc6.weight"].shape[1])
    return with_geometry_preprocess(dataclasses.replace(weights, config=config), weights.preprocess)


def _describe(config: C3DConfig) -> str:
    return (
        f"width x{config.width_mult:g}, fc {config.fc_dim}, depths {'-'.join(map(str, config.temporal_depths))}, "
        f"{config.num_classes} classes, {config.clip_len}x{config.crop_size}x{config.crop_size} input, "
        f"pool5 {config.pool5}"
    )


MAX_CLASSES = 1_000_000
"""Largest classifier `model_from_weights` builds on request (ImageNet-21k has 21,841 classes)."""


def model_from_weights(
    weights: WeightFile, num_classes: int | None = None, class_names: list[str] | None = None, strict: bool = True,
    copy: bool = True,
) -> C3D:
    """Build a C3D from a `WeightFile` and load its tensors (see `load_model`).

    Shapes are checked, and the model is built on the meta device, before any memory is allocated; the
    parameters are then the file's tensors (copies of them with `copy`), and only layers the file lacks (a new
    classifier) are allocated and initialised.

    Args:
        weights: what `read_weights` returned.
        num_classes: classifier size wanted (see `load_model`).
        class_names: names for the classes (see `load_model`).
        strict: refuse files with missing backbone tensors.
        copy: copy the tensors (the default). False makes the model's parameters the `WeightFile`'s own tensors,
            so loading costs no second copy; do not use `weights` afterwards.
    """
    config, names = weights.config, weights.class_names
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if class_names is not None and len(class_names) != num_classes:
        raise WeightsError(f"{len(class_names)} class names given for num_classes={num_classes}")
    state = dict(weights.state)
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise WeightsError(f"num_classes must be from 1 to {MAX_CLASSES:,}, got {num_classes}")
    reset_head = num_classes is not None and (num_classes != config.num_classes or not weights.has_head)
    if num_classes is not None and num_classes != config.num_classes:
        if weights.has_head:
            log.warning(
                "%s: the classifier has %d classes, %d requested: re-initialising the classifier (fine-tuning)",
                weights.path, config.num_classes, num_classes,
            )
        config = config.replace(num_classes=num_classes)
    if reset_head or class_names is not None:
        names = list(class_names) if class_names is not None else None
    if reset_head:
        state.pop("head.weight", None)
        state.pop("head.bias", None)

    # The file's own config was bounded by read_weights; what is added here (a classifier) the caller asked for.
    expected = check_architecture(str(weights.path), config, {k: tuple(v.shape) for k, v in state.items()},
                                  _describe(config), max_unbacked=None)
    missing = [k for k in expected if k not in state]
    missing_backbone = [k for k in missing if not k.startswith("head.")]
    if missing_backbone and strict:
        raise WeightsError(
            f"{weights.path}: missing backbone weights {missing_backbone}; the file is incomplete or not a C3D "
            f"checkpoint (pass strict=False to keep those layers randomly initialised)"
        )
    model = _assemble(config, weights.preprocess, names, {k: v for k, v in state.items() if k in expected}, copy)
    loaded = sum(state[k].numel() for k in state if k in expected)
    log.info(
        "%s: loaded %d tensors (%s parameters) from %s weights", weights.path, len(state), f"{loaded:,}",
        weights.source_format,
    )
    if missing:
        level = log.warning if missing_backbone or not reset_head else log.info
        level("%s: missing (randomly initialised): %s", weights.path, ", ".join(missing))
    if weights.unexpected:
        log.warning("%s: unexpected keys (ignored): %s", weights.path,
                    ", ".join(printable(k) for k in weights.unexpected[:20])
                    + (f", ... ({len(weights.unexpected) - 20} more)" if len(weights.unexpected) > 20 else ""))
    model.source_format = weights.source_format  # recorded again by save_model
    return model.eval()


class _SkipInitialisers(TorchFunctionMode):
    """Inside, `torch.nn.init` functions and `Tensor.normal_` leave their tensor as it is.

    For building a C3D skeleton on the meta device: its weights come from the file, and initialising meta
    tensors is not free (meta `normal_` imports torch._dynamo and sympy: 70 MB and a second).
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _assemble(config: C3DConfig, preprocess: Preprocess, class_names: list[str] | None,
              state: dict[str, torch.Tensor], copy: bool) -> C3D:
    """A C3D whose parameters are `state`'s tensors; layers missing from `state` are initialised as C3D does."""
    with torch.device("meta"), _SkipInitialisers():  # shapes only: nothing is allocated or initialised twice
        model = C3D(config, preprocess=preprocess, class_names=class_names)
    params = {k: (v.detach().clone() if copy else v.detach()).to(torch.float32) for k, v in state.items()}
    model.load_state_dict(params, strict=False, assign=True)
    del params
    if model.head.weight.is_meta:  # a new classifier, initialised by C3D itself on the CPU
        model.head = torch.nn.Linear(config.fc_dim, 1)  # tells reset_classifier the device; replaced at once
        model.reset_classifier(config.num_classes, class_names)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)) and module.weight.is_meta:
            module.to_empty(device="cpu")  # strict=False and a missing backbone layer: C3D's own init
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    return model


def load_model(path: str | os.PathLike[str], num_classes: int | None = None, class_names: list[str] | None = None,
               *, strict: bool = True, pool5: Pool5Mode | None = None, progress: bool | None = None) -> C3D:
    """Load any supported weight file into a ready C3D (in eval mode).

    Formats and key layouts are detected from the file's content: native `.safetensors` with c3dnet metadata;
    mmaction2 `.pth` (backbone-only or full recognizer, bare or wrapped in {"state_dict": ...}); the seed's
    PaddlePaddle `.pdparams`; Caffe conversions (`conv1 ... fc8`, which imply Caffe pool5 and preprocessing);
    Sequential ports (`features.N`, `classifier.N`). Torch files load with `weights_only=True`; pickles go
    through `c3dnet.safe_pickle`. Without metadata the architecture is inferred from tensor shapes.

    Args:
        path: the weight file.
        num_classes: classifier size wanted; if it differs from the file's (or the file has no classifier)
            the classifier is re-initialised with a warning, for fine-tuning.
        class_names: names for the classes; implies `num_classes=len(class_names)` when that is not given.
        strict: refuse files with missing backbone tensors (default); False keeps those layers random.
        pool5: override the pool5 mode that the file implies ("caffe" for Caffe weights in another layout);
            the input size is refitted to fc6 when the pool5 grid changes.
        progress: show a download's progress bar when `path` is a registry name (see `read_weights`).

    Returns:
        The model with `.config`, `.preprocess`, `.class_names` and `.source_format` set.

    Raises:
        WeightsError: unreadable, unsafe or truncated files, unknown layouts, or tensors whose shapes do not fit
        (each key named with both shapes).

    Example:
        >>> from c3dnet.weights import load_model
        >>> model = load_model("c3d_ucf101.pdparams")                     # doctest: +SKIP
        >>> model = load_model("c3d_sports1m.pth", num_classes=51)        # doctest: +SKIP
    """
    weights = read_weights(path, progress=progress)
    if pool5 is not None:
        weights = with_pool5(weights, pool5)
    if not weights.has_head and num_classes is None:
        log.warning(
            "%s: the file has no classifier; using a randomly initialised %d-class one (pass num_classes)",
            weights.path, weights.config.num_classes,
        )
    return model_from_weights(weights, num_classes=num_classes, class_names=class_names, strict=strict, copy=False)


__all__ = ["WeightFile", "load_model", "model_from_weights", "read_weights", "with_geometry_preprocess", "with_pool5"]
