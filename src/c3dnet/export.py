"""ONNX export of a C3D and ONNX Runtime inference with the same calls as the PyTorch model.

One graph serves both `predict` and `extract`: input `clips` (N, 3, T, H, W) float32, already normalised as the
weights' preprocessing says, and four outputs `logits`, `pool5`, `fc6`, `fc7` (all with a dynamic batch axis).
The graph carries its own metadata (`metadata_props`): the C3D config, the preprocessing and the class names as
JSON, so an `.onnx` file alone is enough to classify videos or extract features.

Example:
    >>> from c3dnet.export import export_onnx, OnnxC3D
    >>> report = export_onnx(model, "model.onnx")                 # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4                                # doctest: +SKIP
    True
    >>> onnx_model = OnnxC3D("model.onnx")                        # doctest: +SKIP
    >>> logits = onnx_model(x)                                    # doctest: +SKIP
    >>> fc6 = onnx_model.forward_features(x, layer="fc6")         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write_bytes
from c3dnet.log import get_logger
from c3dnet.model import C3D, FEATURE_LAYERS, C3DConfig
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

INPUT_NAME = "clips"
OUTPUT_NAMES: tuple[str, ...] = ("logits", "pool5", "fc6", "fc7")
DEFAULT_OPSET = 17
META_PREFIX = "c3dnet."


class _ExportGraph(nn.Module):
    """The eval-mode forward pass with every feature layer exposed as an output (dropout is the identity)."""

    def __init__(self, model: C3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        pool5 = m.forward_pool5(x)  # (N, D5)
        fc6 = torch.relu(m.fc6(pool5))  # (N, fc_dim)
        fc7 = torch.relu(m.fc7(fc6))
        return m.head(fc7), pool5, fc6, fc7


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how closely ONNX Runtime matches PyTorch on a random batch."""

    path: Path
    opset: int
    size_bytes: int
    max_abs_diff: dict[str, float]  # output name -> max |onnxruntime - torch|
    verified_batch: int

    @property
    def worst_diff(self) -> float:
        return max(self.max_abs_diff.values())


def export_onnx(
    model: C3D,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    verify_batch: int = 3,
    extra_metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export `model` to an ONNX file (dynamic batch, metadata embedded), written atomically.

    Args:
        model: the C3D to export (moved to the CPU in eval mode for tracing; the caller's copy is not changed).
        path: output `.onnx` file.
        opset: ONNX opset, at least 17.
        verify: run ONNX Runtime and PyTorch on a random batch of `verify_batch` clips (a batch size other
            than the traced one, which also checks the dynamic axis) and record the max abs differences.
        extra_metadata: more `metadata_props` entries (string values), e.g. the source weights.

    Returns:
        An `ExportReport`; `max_abs_diff` is empty when `verify` is False.
    """
    import copy
    import io

    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (max_pool3d with ceil mode and dynamic shapes), got {opset}")
    path = Path(path)
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    graph = _ExportGraph(cpu_model).eval()
    c, t, h, w = cpu_model.input_shape
    example = torch.zeros(2, c, t, h, w)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about the model's input-shape check,
        # which is constant for a traced graph by design (the ONNX input shape is fixed but for the batch).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "config": json.dumps(cpu_model.config.to_dict()),
        "preprocess": json.dumps(cpu_model.preprocess.to_dict()),
        "class_names": json.dumps(cpu_model.class_names),
        "feature_dims": json.dumps(cpu_model.feature_dims),
        **(extra_metadata or {}),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)
    proto.producer_name = "c3dnet"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    diffs: dict[str, float] = {}
    if verify:
        diffs = verify_onnx(cpu_model, path, batch=verify_batch)
        log.info("ONNX Runtime vs PyTorch, max abs difference: %s",
                 ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return ExportReport(path=path, opset=opset, size_bytes=len(data), max_abs_diff=diffs, verified_batch=verify_batch)


def verify_onnx(model: C3D, path: str | os.PathLike[str], batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and PyTorch for every output, on random normalised clips."""
    import copy

    cpu_model = copy.deepcopy(model).float().cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    # Inputs on the scale of real normalised frames (pixels minus a mean: about -128..128).
    x = torch.randn(batch, *cpu_model.input_shape, generator=generator) * 60.0
    with torch.inference_mode():
        expected = [o.numpy() for o in _ExportGraph(cpu_model)(x)]
    session = OnnxC3D(path)
    got = session.run(x.numpy(), OUTPUT_NAMES)
    return {name: float(np.abs(g - e).max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}


class OnnxC3D:
    """An exported C3D run by ONNX Runtime, answering the calls of `C3D` used for inference.

    Attributes `config`, `preprocess`, `class_names`, `feature_dims`, `num_classes` and `input_shape` come
    from the file's metadata. `__call__`/`forward` give logits, `forward_features(x, layer)` a feature layer;
    both take a float32 `torch.Tensor` or `np.ndarray` (N, 3, T, H, W) and return a CPU `torch.Tensor`.
    """

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: ONNX file not found; create it with `c3d export --weights W --out "
                               f"{self.path.name}`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or _default_providers()
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            raise WeightsError(f"{self.path}: ONNX Runtime cannot load this file ({e}); re-export it with "
                               "`c3d export`") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = {o.name for o in self.session.get_outputs()}
        if META_PREFIX + "config" not in meta or not set(OUTPUT_NAMES) <= outputs:
            raise WeightsError(f"{self.path}: not an ONNX file written by `c3d export` (no c3dnet metadata or "
                               f"outputs {OUTPUT_NAMES}); re-export the weights with `c3d export`")
        self.config = C3DConfig.from_dict(json.loads(meta[META_PREFIX + "config"]))
        self.preprocess = Preprocess.from_dict(json.loads(meta[META_PREFIX + "preprocess"]))
        self.class_names: list[str] | None = json.loads(meta[META_PREFIX + "class_names"])
        self.feature_dims: dict[str, int] = json.loads(meta[META_PREFIX + "feature_dims"])
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return c.in_channels, c.clip_len, c.crop_size, c.crop_size

    def run(self, x: np.ndarray | torch.Tensor, outputs: tuple[str, ...] | list[str]) -> list[np.ndarray]:
        """The named outputs for a batch of normalised clips (N, 3, T, H, W)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 5 or tuple(x.shape[1:]) != self.input_shape:
            c, t, h, w = self.input_shape
            raise ValueError(f"{self.path.name} expects clips of shape (N, {c}, {t}, {h}, {w}), got {x.shape}")
        return self.session.run(list(outputs), {INPUT_NAME: x})

    def forward(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x, ["logits"])[0])

    __call__ = forward

    def forward_features(self, x: np.ndarray | torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"layer must be one of {FEATURE_LAYERS}, got {layer!r}")
        return torch.from_numpy(self.run(x, [layer])[0])

    def eval(self) -> OnnxC3D:
        return self


def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
