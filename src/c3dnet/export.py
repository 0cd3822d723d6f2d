"""ONNX export of a C3D and ONNX Runtime inference with the same calls as the PyTorch model.

One graph serves both `predict` and `extract`: input `clips` (N, 3, T, H, W) float32, already normalised as the
weights' preprocessing says, and four outputs `logits`, `pool5`, `fc6`, `fc7` (all with a dynamic batch axis).
The graph carries its own metadata (`metadata_props`): the C3D config, the preprocessing and the class names as
JSON, so an `.onnx` file alone is enough to classify videos or extract features.

The export is checked before it is published: ONNX Runtime and PyTorch run the same clips (uint8-range pixels
normalised as the weights' preprocessing says, the magnitudes real inputs have) and, per output, the max
difference relative to the output's own scale, max |ONNX - PyTorch| / max |PyTorch|, must stay within
`tolerance` (1e-4 by default). An absolute bound cannot serve every model: the full-size C3D's logits and fc6
run into the hundreds, where float32 rounding alone differs by about 1e-3. Until the check passes the file lives
in a staging folder beside `path`; a failed check raises `ExportError` and leaves nothing at `path`.

Example:
    >>> from c3dnet.export import export_onnx, OnnxC3D
    >>> report = export_onnx(model, "model.onnx")                 # doctest: +SKIP
    >>> report.worst_rel_diff <= 1e-4                             # doctest: +SKIP
    True
    >>> onnx_model = OnnxC3D("model.onnx")                        # doctest: +SKIP
    >>> logits = onnx_model(x)                                    # doctest: +SKIP
    >>> fc6 = onnx_model.forward_features(x, layer="fc6")         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from c3dnet.errors import C3DError, WeightsError
from c3dnet.fileio import publish
from c3dnet.log import get_logger
from c3dnet.model import C3D, FEATURE_LAYERS, C3DConfig
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

INPUT_NAME = "clips"
OUTPUT_NAMES: tuple[str, ...] = ("logits", "pool5", "fc6", "fc7")
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
"""Max |ONNX Runtime - PyTorch| / max |PyTorch| allowed per output. The full-size C3D, freshly initialised,
measures about 1e-6 to 1e-5 (float32 rounding in a different order of operations)."""
META_PREFIX = "c3dnet."
EXTERNAL_DATA_BYTES = 2**31 - 2**26
"""Models larger than this (protobuf's 2 GiB limit, less room for the graph and metadata) keep their weights in
one external-data file beside the model, `<name>.data`, as ONNX requires above 2 GiB."""


class ExportError(C3DError):
    """An export that failed its check against PyTorch; nothing was written."""


class OutputsGraph(nn.Module):
    """The eval-mode forward pass with every feature layer exposed as an output (dropout is the identity): the
    graph `c3d export` writes as ONNX and `c3d quantize` converts to OpenVINO, outputs (logits, pool5, fc6, fc7)."""

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
class OutputDiff:
    """ONNX Runtime against PyTorch on one output: max |difference|, and max |PyTorch| (its scale)."""

    max_abs_diff: float
    max_abs_torch: float

    @property
    def rel_diff(self) -> float:
        """max |ONNX - PyTorch| / max |PyTorch| (0 when both are all zeros, inf when only PyTorch's is)."""
        if self.max_abs_torch > 0:
            return self.max_abs_diff / self.max_abs_torch
        return 0.0 if self.max_abs_diff == 0 else math.inf


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how closely ONNX Runtime matches PyTorch (empty `diffs` without a check)."""

    path: Path
    opset: int
    size_bytes: int  # the model file and its external data file, if any
    diffs: dict[str, OutputDiff]  # output name -> ONNX Runtime vs PyTorch
    verified_batch: int
    tolerance: float
    external_data: Path | None = None  # the weights file beside `path` for models over 2 GiB

    @property
    def rel_diff(self) -> dict[str, float]:
        return {name: d.rel_diff for name, d in self.diffs.items()}

    @property
    def max_abs_diff(self) -> dict[str, float]:
        return {name: d.max_abs_diff for name, d in self.diffs.items()}

    @property
    def worst_rel_diff(self) -> float:
        return max(self.rel_diff.values(), default=0.0)


def export_onnx(
    model: C3D,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    verify_batch: int = 3,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export `model` to an ONNX file (dynamic batch, metadata embedded), published only once verified.

    Everything is written to a staging folder beside `path` first and renamed into place at the end, so a
    crash, or a failed check, leaves `path` as it was (absent, or the previous export) and no temporaries.

    Args:
        model: the C3D to export (moved to the CPU in eval mode for tracing; the caller's copy is not changed).
        path: output `.onnx` file. A model over 2 GiB also writes `<path>.data` (its weights) beside it.
        opset: ONNX opset, at least 17.
        verify: run ONNX Runtime and PyTorch on `verify_batch` clips (a batch size other than the traced one,
            which also checks the dynamic axis) and compare every output.
        tolerance: the largest max |ONNX - PyTorch| / max |PyTorch| accepted for any output.
        extra_metadata: more `metadata_props` entries (string values), e.g. the source weights.

    Returns:
        An `ExportReport`; its `diffs` are empty when `verify` is False.

    Raises:
        ExportError: an output differs by more than `tolerance`; nothing was written.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (max_pool3d with ceil mode and dynamic shapes), got {opset}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 (a relative difference, e.g. 1e-4), got {tolerance}")
    if model.preprocess.volume_mean is not None:  # its values live in the native file, not in ONNX metadata
        raise WeightsError("weights with a Caffe volume mean (c3d convert --mean-file) cannot be exported to ONNX; "
                           "export weights converted without --mean-file")
    import copy

    path = Path(path)
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    graph = OutputsGraph(cpu_model).eval()
    c, t, h, w = cpu_model.input_shape
    example = torch.zeros(2, c, t, h, w)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    sidecar_name = path.name + ".data"
    with staging_dir(path) as staging:
        traced = staging / "traced" / path.name
        traced.parent.mkdir()
        with warnings.catch_warnings():
            # The TorchScript exporter warns about its own deprecation and about the model's input-shape check,
            # which is constant for a traced graph by design (the ONNX input shape is fixed but for the batch).
            warnings.simplefilter("ignore")
            # A file, not a buffer: above 2 GiB the exporter writes the weights as external data beside it.
            torch.onnx.export(
                graph, (example,), str(traced), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True,
            )
        proto = onnx.load(str(traced))  # with any external data the exporter wrote
        shutil.rmtree(traced.parent)
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
        staged = staging / path.name
        external = proto.ByteSize() > EXTERNAL_DATA_BYTES
        # One external file under its final name: the model refers to it by that (relative) name.
        onnx.save_model(proto, str(staged), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=sidecar_name)
        del proto
        onnx.checker.check_model(str(staged))
        staged_files = [staged] + ([staging / sidecar_name] if external else [])
        size = sum(f.stat().st_size for f in staged_files)
        diffs: dict[str, OutputDiff] = {}
        if verify:
            diffs = _compare(cpu_model, staged, verify_batch, seed=0)
            # Debug only: the caller reports the check (`c3d export` prints it from the report, once).
            log.debug("ONNX Runtime vs PyTorch, max |difference| / max |PyTorch|: %s",
                      ", ".join(f"{k} {d.rel_diff:.2e}" for k, d in diffs.items()))
            failed = {k: d for k, d in diffs.items() if not d.rel_diff <= tolerance}
            if failed:
                raise ExportError(_failure_message(path, diffs, failed, tolerance, verify_batch))
        # The weights first: once the model file appears, the data it names is complete.
        for staged_file in reversed(staged_files):
            publish(staged_file, path.parent / staged_file.name)
    return ExportReport(path=path, opset=opset, size_bytes=size, diffs=diffs, verified_batch=verify_batch,
                        tolerance=tolerance, external_data=path.parent / sidecar_name if external else None)


def _failure_message(path: Path, diffs: dict[str, OutputDiff], failed: dict[str, OutputDiff], tolerance: float,
                     batch: int) -> str:
    measured = ", ".join(f"{k} {d.rel_diff:.3g} ({d.max_abs_diff:.3g} of max {d.max_abs_torch:.3g})"
                         for k, d in diffs.items())
    kept = " (the earlier file there is left as it was)" if path.exists() else ""
    return (f"{path}: not written{kept}: ONNX Runtime differs from PyTorch by more than the tolerance {tolerance:g} on "
            f"{', '.join(failed)} (max |ONNX - PyTorch| / max |PyTorch| on {batch} clips: {measured}). "
            "If these are float32 rounding differences, raise --tolerance (e.g. 1e-3); otherwise try another "
            "--opset or report it with the weights' format and your torch and onnxruntime versions")


@contextlib.contextmanager
def staging_dir(path: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `path` (same filesystem, so its files rename into place), always removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def verification_clips(model: C3D, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Normalised model input (batch, C, T, H, W) on the scale of real clips: uint8-range pixels put through the
    model's preprocessing (for the default mean and std 1, about -128..151).

    Clips cycle through three kinds: uniform noise over 0..255 (every value, high frequencies), a smooth
    random image sequence (what frames look like), and a saturated one (0 and 255 only: the extremes).
    """
    from c3dnet.data.transforms import normalize

    c, t, h, w = model.input_shape
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(batch):
        if i % 3 == 0:
            clip = torch.randint(0, 256, (c, t, h, w), generator=generator).float()
        else:
            coarse = torch.rand(1, c, max(1, t // 4), max(1, h // 8), max(1, w // 8), generator=generator)
            clip = nn.functional.interpolate(coarse, size=(t, h, w), mode="trilinear", align_corners=False)[0]
            clip = clip * 255 if i % 3 == 1 else (clip > 0.5).float() * 255
        clips.append(clip)
    x = torch.stack(clips)  # (N, C, T, H, W), 0..255
    if c == 3:
        return normalize(x, model.preprocess)
    return x - 128.0


def _compare(cpu_model: C3D, path: Path, batch: int, seed: int) -> dict[str, OutputDiff]:
    x = verification_clips(cpu_model, batch, seed)
    with torch.inference_mode():
        expected = [o.numpy() for o in OutputsGraph(cpu_model)(x)]
    got = OnnxC3D(path).run(x.numpy(), OUTPUT_NAMES)
    return {name: OutputDiff(float(np.abs(g - e).max()), float(np.abs(e).max()))
            for name, g, e in zip(OUTPUT_NAMES, got, expected)}


class ExportedShape:
    """`num_classes` and `input_shape` of a C3D run outside PyTorch, from its `config` (ONNX, OpenVINO)."""

    config: C3DConfig

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return c.in_channels, c.clip_len, c.crop_size, c.crop_size


class OnnxC3D(ExportedShape):
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
