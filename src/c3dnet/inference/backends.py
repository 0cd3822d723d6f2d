"""Backends: a loaded model that turns uint8 clips into rows of its outputs, on its device, at its precision.

Every consumer (test, predict, extract, serve, the API) runs models through a `Backend` and never asks what kind of
model it holds. `load_backend` is the one loading path: a weight file or registry name gives a `TorchBackend`
(PyTorch eager, or compiled with `compile=True`), an `.onnx` file from `c3d export` an `OnnxBackend` (ONNX
Runtime), a folder from `c3d quantize` an `OpenVinoBackend` (OpenVINO, int8). `as_backend` wraps a model already
loaded (a `C3D`, an `OnnxC3D`, an `OpenVinoC3D`) the same way. A new runtime is one more class with the same
attributes and `submit`, registered with `as_backend`.

Precision (`--precision`): "auto" is bf16 autocast on CUDA and fp32 on the CPU, so numerics change only when
asked. "bf16" on the CPU is autocast too (oneDNN's AMX or AVX512-BF16 kernels; a CPU without them gets a
warning, since emulated bf16 is slower than fp32). "int8" needs a model quantized by `c3d quantize`. Each backend
logs, at its first batch, the kernels that ran (oneDNN's, or OpenVINO's CPU plugin's).

Example:
    >>> backend = load_backend("c3d-ucf101-mmaction2", device="cuda")          # doctest: +SKIP
    >>> rows = backend.submit(clips_uint8, "fc6").result()   # (B, 3, 16, 112, 112) uint8 -> (B, 4096)  # doctest: +SKIP
    >>> backend.describe()["runtime"], backend.precision                        # doctest: +SKIP
    ('pytorch', 'bf16')
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from c3dnet.data.transforms import normalize
from c3dnet.device import (
    check_cpu_bf16,
    configure_for,
    cpu_int8_isa,
    inference_context,
    onednn_kernels,
    prepare_model,
    select_device,
    to_input,
)
from c3dnet.errors import ConfigError
from c3dnet.export import OnnxC3D
from c3dnet.inference.openvino import OpenVinoC3D, is_ir_folder
from c3dnet.log import get_logger
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

OUTPUTS = ("logits", "pool5", "fc6", "fc7")
"""What a backend can return: the class logits, or the features of one layer (after ReLU)."""

PRECISIONS = ("auto", "fp32", "bf16", "int8")
"""`precision=`: "auto" is bf16 autocast on CUDA and fp32 elsewhere (numerics change only when asked); "int8" is a
model from `c3d quantize`."""

INT8_NEEDS_QUANTIZE = ("--precision int8 runs an int8 OpenVINO model, and {what} is not one: make it with `c3d "
                       "quantize --weights W --calib VIDEOS --out DIR`, then pass --weights DIR")


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`; `ConfigError` saying what is allowed otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def precision_of(precision: str = "auto", amp: bool = True) -> str:
    """The `precision=` a backend gets from a `precision` setting and the older `amp` flag (amp=False: fp32 where
    precision is "auto")."""
    check_precision(precision)
    return "fp32" if precision == "auto" and not amp else precision


def resolve_precision(precision: str, device: torch.device, what: str = "these weights") -> str:
    """"fp32" or "bf16" for a float model (`what`) at `precision` on `device`: "auto" is bf16 on CUDA and fp32
    elsewhere; bf16 on a CPU without native bf16 warns; "int8" is a `ConfigError` naming `c3d quantize`."""
    check_precision(precision)
    if precision == "int8":
        raise ConfigError(INT8_NEEDS_QUANTIZE.format(what=what))
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu":
        check_cpu_bf16()
    return precision


class PendingRows:
    """The rows of a batch that `Backend.submit` queued: `.result()` waits for them (at most once)."""

    def __init__(self, rows: np.ndarray | torch.Tensor, done: torch.cuda.Event | None = None,
                 keep: tuple[torch.Tensor, ...] = ()) -> None:
        self._rows, self._done, self._keep = rows, done, keep  # `keep`: device memory in use until done

    def result(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
            self._done, self._keep = None, ()
        return self._rows.numpy() if isinstance(self._rows, torch.Tensor) else self._rows


@runtime_checkable
class Backend(Protocol):
    """A model ready to run: what it is (config, preprocessing, classes, feature sizes), where and how it runs
    (runtime, device, precision, input layout), and `submit`."""

    runtime: str  # "pytorch", "onnxruntime", ...
    device: torch.device
    precision: str  # "fp32", "bf16", ...
    preprocess: Preprocess
    config: C3DConfig
    class_names: list[str] | None
    feature_dims: dict[str, int]
    source: str  # the weights' path or name ("" for a model made in this process)

    @property
    def num_classes(self) -> int: ...

    @property
    def asynchronous(self) -> bool:
        """Whether `submit` returns before the rows are computed (a GPU)."""
        ...

    def submit(self, clips: torch.Tensor, output: str, preprocess: Preprocess | None = None) -> PendingRows:
        """Queue uint8 clips (B, 3, T, crop, crop) for `output`; `.result()` gives float32 rows (B, D)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `c3d serve`'s /v1/model and the logs say of it."""
        ...


def output_dim(backend: Backend, output: str) -> int:
    """Width of the rows of `output`."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return backend.num_classes if output == "logits" else backend.feature_dims[output]


class Compiled(nn.Module):
    """`module` through torch.compile, falling back to eager mode only when the first call fails.

    torch.compile raises its errors lazily, at the first call: then (no compiler, an unsupported op) the module runs
    eagerly from then on, with a warning. A failure at any later call is the model's own and is raised.

    With `pad_batches` (inference), the graph is compiled for the first batch's size: smaller batches are padded
    to it with the same strides, so a last short batch does not recompile, and larger ones run eagerly.
    `python benchmarks/bench_model.py --paths naive,c3dnet,compile` measures the gain.
    """

    def __init__(self, module: nn.Module, pad_batches: bool = False, mode: str | None = None) -> None:
        super().__init__()
        self.eager = module
        self.__dict__["_compiled"] = torch.compile(module, mode=mode)  # not a submodule: no second state_dict copy
        self.pad_batches = pad_batches
        self.batch: int | None = None  # the batch size of the first call, once it has succeeded
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(x)
        if self.batch is None:
            try:
                out = self._compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure at the first call falls back
                log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, e)
                self.failed = True
                return self.eager(x)
            self.batch = x.shape[0]
            return out
        n = x.shape[0]
        if not self.pad_batches or n == self.batch:
            return self._compiled(x)
        if n > self.batch:
            return self.eager(x)
        # Same shape and strides as the compiled batch: no recompile.
        layout = torch.channels_last_3d if x.ndim == 5 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
        padded = torch.empty((self.batch, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
        padded[:n] = x
        padded[n:] = x[:1]
        return self._compiled(padded)[:n]


class ModelOutput(nn.Module):
    """One output of a C3D as a module's forward: what torch.compile compiles."""

    def __init__(self, model: C3D, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.output == "logits" else self.model.forward_features(x, self.output)


class TorchBackend:
    """A `C3D` run by PyTorch on `device`: in eval mode, channels_last_3d (unless `channels_last` is False), bf16
    autocast on CUDA unless `precision` is "fp32" (on the CPU only with "bf16"), and through torch.compile with
    `compile` (batches padded to the first one's size, so nothing recompiles). The first batch on the CPU logs
    the oneDNN kernels it ran (`kernels`)."""

    runtime = "pytorch"

    def __init__(self, model: C3D, device: torch.device | str = "cpu", precision: str = "auto",
                 compile: bool = False, channels_last: bool = True, source: str = "",
                 local_rank: int | None = None) -> None:
        # "auto", "cuda", ...: the process is set up for the device it picks (cudnn, host threads)
        self.device = configure_for(select_device(str(device), local_rank))
        self.precision = resolve_precision(precision, self.device, source or "a PyTorch model")
        self.channels_last, self.compiled, self.source = channels_last, compile, source
        self.model = prepare_model(model.eval(), self.device, channels_last)
        self.preprocess, self.config, self.class_names = model.preprocess, model.config, model.class_names
        self.feature_dims = dict(model.feature_dims)
        self.kernels: dict[str, Any] | None = None  # oneDNN's report of the first CPU batch
        # every output's forward made here: one made later would not move the model while a batch runs
        self._forwards: dict[str, nn.Module] = {}
        for output in OUTPUTS:
            forward: nn.Module = ModelOutput(self.model, output)
            self._forwards[output] = Compiled(forward, pad_batches=True) if compile else forward

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def asynchronous(self) -> bool:
        return self.device.type == "cuda"

    def submit(self, clips: torch.Tensor, output: str, preprocess: Preprocess | None = None) -> PendingRows:
        """On CUDA the copy in, the model and the copy of the rows into pinned memory are queued on the current
        stream, so the caller can prepare the next batch meanwhile; `clips` (pinned, for a truly asynchronous
        copy) must stay untouched until `.result()` has returned. Elsewhere the rows are computed here. Any memory
        layout of `clips` is accepted: (B, 3, T, H, W) viewed from a (B, T, H, W, 3) buffer is already
        channels_last_3d, so it is copied as it is."""
        with inference_context(self.device, precision=self.precision):
            x = to_input(clips, preprocess or self.preprocess, self.device, self.channels_last)  # float32
            if self.kernels is None and self.device.type == "cpu":
                out, self.kernels = onednn_kernels(lambda: self._forwards[output](x).float())
                log.info("PyTorch %s on the CPU: %s", self.precision, kernel_summary(self.kernels["kernels"],
                                                                                   self.kernels.get("isa")))
            else:
                out = self._forwards[output](x).float()
        if self.device.type != "cuda":
            return PendingRows(out.numpy())
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingRows(host, done, keep=(x, out))

    def describe(self) -> dict[str, Any]:
        return {"runtime": "pytorch" + (" (torch.compile)" if self.compiled else ""), "device": str(self.device),
                "precision": self.precision, "layout": "channels_last_3d" if self.channels_last else "contiguous",
                "weights": self.source, **({"kernels": self.kernels["kernels"]} if self.kernels else {})}


def kernel_summary(kernels: dict[str, int], isa: str | None = None) -> str:
    """One log line's worth of a kernel count ("convolution brg_conv_fwd:avx10_1_512_amx x8, ...")."""
    text = ", ".join(f"{name} x{n}" for name, n in sorted(kernels.items(), key=lambda kv: -kv[1])) or \
        "no oneDNN kernels (PyTorch's own)"
    return text + (f" (oneDNN ISA: {isa})" if isa else "")


class OnnxBackend:
    """An `OnnxC3D` (a file from `c3d export`) run by ONNX Runtime on the CPU, in float32."""

    runtime = "onnxruntime"
    asynchronous = False

    def __init__(self, model: OnnxC3D, precision: str = "auto", source: str = "") -> None:
        self.device = torch.device("cpu")
        if resolve_precision(precision, self.device, f"the ONNX model {model.path}") != "fp32":
            raise ConfigError(f"{model.path}: an ONNX model from `c3d export` runs in fp32 only; leave --precision "
                              "out (or give fp32)")
        self.precision = "fp32"
        self.model, self.source = model, source or str(model.path)
        self.preprocess, self.config, self.class_names = model.preprocess, model.config, model.class_names
        self.feature_dims = dict(model.feature_dims)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def submit(self, clips: torch.Tensor, output: str, preprocess: Preprocess | None = None) -> PendingRows:
        x = normalize(clips, preprocess or self.preprocess)
        return PendingRows(self.model.run(x, [output])[0].astype(np.float32))

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "device": "cpu", "precision": "fp32", "layout": "contiguous",
                "weights": self.source}


class OpenVinoBackend:
    """An `OpenVinoC3D` run by OpenVINO's CPU plugin: a float model (converted in this process) in fp32 or bf16
    (its inference precision hint; "auto": fp32), an int8 model from `c3d quantize` in int8. The kernels the plugin
    chose are logged when it is made (`kernels`)."""

    runtime = "openvino"
    asynchronous = False

    def __init__(self, model: OpenVinoC3D, device: torch.device | str = "cpu", precision: str = "auto",
                 source: str = "") -> None:
        where = str(model.path) if model.path else "the OpenVINO model"
        if str(device) not in ("auto", "cpu"):
            raise ConfigError(f"{where}: OpenVINO runs on the CPU here; leave --device out (or give cpu)")
        self.device = torch.device("cpu")
        if model.quantized:
            if check_precision(precision) not in ("auto", "int8"):
                raise ConfigError(f"{where}: an int8 model from `c3d quantize`; --precision {precision} runs the "
                                  f"weights it was made from ({model.metadata.get('weights') or 'see c3d info'}), "
                                  "not this folder")
            self.precision = "int8"
            if cpu_int8_isa() is None:
                log.warning("%s: this CPU has no int8 dot-product instructions (VNNI or AMX-INT8): int8 gains less "
                            "over fp32 here", where)
        else:
            self.precision = resolve_precision(precision, self.device, "a float OpenVINO model")
        self.model, self.source = model, source or (str(model.path) if model.path else "")
        self.preprocess, self.config, self.class_names = model.preprocess, model.config, model.class_names
        self.feature_dims = dict(model.feature_dims)
        self.compiled = model.compile(self.precision)
        self.kernels = self.compiled.kernels()
        log.info("OpenVINO %s on the CPU: %s", self.precision, kernel_summary(self.kernels))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def submit(self, clips: torch.Tensor, output: str, preprocess: Preprocess | None = None) -> PendingRows:
        x = normalize(clips, preprocess or self.preprocess)
        return PendingRows(self.compiled.run(x, [output])[0])

    def describe(self) -> dict[str, Any]:
        return {"runtime": "openvino", "device": "cpu", "precision": self.precision, "layout": "contiguous",
                "weights": self.source, "kernels": self.kernels}


@functools.singledispatch
def as_backend(model: Any, device: torch.device | str = "cpu", precision: str = "auto", compile: bool = False,
               channels_last: bool = True, source: str = "", local_rank: int | None = None) -> Backend:
    """The backend that runs `model`: a `C3D` on `device`, an `OnnxC3D` by ONNX Runtime; a backend as it is."""
    raise TypeError(f"cannot run a {type(model).__name__}: give a C3D, an OnnxC3D, a backend, or a weights path to "
                    "load_backend")


@as_backend.register
def _(model: nn.Module, device: torch.device | str = "cpu", precision: str = "auto", compile: bool = False,
      channels_last: bool = True, source: str = "", local_rank: int | None = None) -> Backend:
    return TorchBackend(model, device, precision, compile, channels_last, source, local_rank)


@as_backend.register
def _(model: OnnxC3D, device: torch.device | str = "cpu", precision: str = "auto", compile: bool = False,
      channels_last: bool = True, source: str = "", local_rank: int | None = None) -> Backend:
    if compile:
        raise ConfigError("--compile applies to --weights; an ONNX model runs through ONNX Runtime")
    return OnnxBackend(model, precision, source)


@as_backend.register
def _(model: OpenVinoC3D, device: torch.device | str = "cpu", precision: str = "auto", compile: bool = False,
      channels_last: bool = True, source: str = "", local_rank: int | None = None) -> Backend:
    if compile:
        raise ConfigError("--compile applies to PyTorch weights; an OpenVINO model is compiled by OpenVINO")
    return OpenVinoBackend(model, "cpu" if str(device) == "auto" else device, precision, source)


@as_backend.register(TorchBackend)
@as_backend.register(OnnxBackend)
@as_backend.register(OpenVinoBackend)
def _(model: Backend, *args: Any, **kwargs: Any) -> Backend:
    return model


def load_backend(weights: str | os.PathLike[str] | C3D | OnnxC3D | Backend, device: str | torch.device = "auto",
                 precision: str = "auto", compile: bool = False, progress: bool | None = None,
                 local_rank: int | None = None, channels_last: bool = True) -> Backend:
    """The one loading path of the commands, the API and the server.

    Args:
        weights: a weight file or registry name (any format `c3d` loads), an `.onnx` file from `c3d export`, a
            folder from `c3d quantize` (OpenVINO), or a loaded model or backend.
        device: "auto", "cpu" or "cuda[:N]" (ONNX and OpenVINO models run on the CPU); the process is set up for
            it (`c3dnet.device.configure_for`).
        precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32", "bf16" (on the CPU too), or "int8"
            (a folder from `c3d quantize`).
        compile: torch.compile a PyTorch model.
        progress: the download bar of a weight name (None: when on a terminal).
        local_rank: this process's GPU under torchrun.
        channels_last: a PyTorch model's memory format (channels_last_3d, the fast one of cuDNN and oneDNN).
    """
    source = ""
    if isinstance(weights, (str, os.PathLike)):
        source = str(weights)
        if Path(weights).suffix.lower() == ".onnx":
            weights = OnnxC3D(weights)
        elif is_ir_folder(weights):
            weights = OpenVinoC3D.load(weights)
        else:
            if check_precision(precision) == "int8":  # before loading: the weights cannot run in int8
                raise ConfigError(INT8_NEEDS_QUANTIZE.format(what=source))
            from c3dnet.weights import load_model

            weights = load_model(weights, progress=progress)
    return as_backend(weights, device, precision, compile, channels_last, source, local_rank)
