"""OpenVINO: a C3D as an OpenVINO model on the CPU (fp32, bf16 or int8), and the IR folders `c3d quantize` writes.

`OpenVinoC3D` is the model, as `export.OnnxC3D` is for ONNX: its config, preprocessing, class names and feature
sizes, and the graph with the four outputs `logits`, `pool5`, `fc6`, `fc7` of `export.OutputsGraph` (input
`clips`, normalised, dynamic batch). `OpenVinoC3D.from_c3d(model)` converts a PyTorch C3D in this process (float);
`OpenVinoC3D.load(folder)` reads a folder written by `c3d quantize` and checks it before anything runs.
`compile(precision)` gives a `CompiledC3D` for OpenVINO's CPU plugin: "fp32" and "bf16" (its inference precision
hint) for a float model, "int8" for a quantized one. `inference.backends.OpenVinoBackend` runs it for the commands.

An IR folder holds:
- `model.xml` and `model.bin`: OpenVINO's IR (the graph, then its weights), read by OpenVINO's own parser:
  nothing in them is executed;
- `c3dnet.json`: what c3dnet needs beside them (format, precision, config, preprocessing, class names, feature
  sizes, the source weights and their SHA-256, the SHA-256 of `model.xml` and `model.bin`, how it was calibrated
  and the accuracy measured on held-out clips). An IR without it (made by another tool), with files other than the
  ones it records (another model's, or changed since), or without the outputs extraction needs is refused, naming
  what is missing.

Example:
    >>> ov_model = OpenVinoC3D.load("c3d_int8")                     # doctest: +SKIP
    >>> compiled = ov_model.compile("int8")                         # doctest: +SKIP
    >>> logits, fc6 = compiled.run(clips_normalised, ["logits", "fc6"])   # doctest: +SKIP
    >>> compiled.kernels()                                          # doctest: +SKIP
    {'Convolution brgconv_avx512_amx_I8': 8, 'FullyConnected brgemm_avx512_amx_I8': 3}
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.errors import ConfigError, WeightsError
from c3dnet.export import INPUT_NAME, OUTPUT_NAMES, ExportedShape, OutputsGraph
from c3dnet.log import get_logger
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

INSTALL = "pip install 'c3dnet[openvino]'"
"""How to get the optional extra (OpenVINO and NNCF)."""
META_FILE, XML_FILE, BIN_FILE = "c3dnet.json", "model.xml", "model.bin"
FORMAT = "c3dnet-openvino"
FORMAT_VERSION = 1
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's inference precision hint per precision. An int8 model keeps the layers NNCF left unquantized in
fp32: OpenVINO's default on a CPU with native bf16 would run them in bf16."""
MAX_META_BYTES = 1 << 20


def require(module: str = "openvino") -> Any:
    """Import `openvino` or `nncf`; `ConfigError` with the pip command when the extra is not installed."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"OpenVINO inference and `c3d quantize` need the openvino extra ({module} is missing): "
                          f"{INSTALL}") from None


_CORE_LOCK = threading.Lock()


def core() -> Any:
    """The process's one `openvino.Core`, kept until exit.

    OpenVINO's CPU plugin gives the calling thread a larger signal stack (for AMX state) when a Core first loads it,
    and puts back the stack it found when that Core's plugin is released. Cores released out of order leave the
    thread on a stack already unmapped, and the next signal handled there (a Python handler, faulthandler, a child's
    SIGCHLD) kills the process with SIGSEGV. One Core that is never released makes one such stack, never freed.
    """
    with _CORE_LOCK:  # two threads must not each make one: the one dropped would release its plugin
        return _core()


@functools.cache
def _core() -> Any:
    return require().Core()


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SPARE_STACK: list[ctypes.Array[ctypes.c_char]] = []
"""The signal stack `signal_stack_kept` installs in place of an unmapped one (allocated once, never freed)."""


def _mapped(address: int) -> bool:
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            start, _, end = line.partition(" ")[0].partition("-")
            if int(start, 16) <= address < int(end, 16):
                return True
    return False


def repair_signal_stack() -> bool:
    """Give the calling thread a mapped signal stack if OpenVINO left it on an unmapped one (see `core`); True
    when it had to. Linux only (elsewhere nothing is done)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    current = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0 or not current.ss_sp or _mapped(current.ss_sp):
        return False
    if not _SPARE_STACK:
        _SPARE_STACK.append(ctypes.create_string_buffer(1 << 16))
    spare = _SignalStack(ctypes.cast(_SPARE_STACK[0], ctypes.c_void_p), 0, len(_SPARE_STACK[0]))
    if libc.sigaltstack(ctypes.byref(spare), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack failed")
    log.debug("OpenVINO left this thread's signal stack unmapped at %#x; a new one is installed", current.ss_sp)
    return True


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Around code that makes and drops its own Cores (NNCF's inference engine does): afterwards, with them
    collected, the thread's signal stack is a mapped one (see `core`)."""
    try:
        yield
    finally:
        gc.collect()
        repair_signal_stack()


def is_ir_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder given as weights: an OpenVINO IR folder (checked by `OpenVinoC3D.load`)."""
    return Path(path).is_dir()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OpenVinoC3D(ExportedShape):
    """A C3D as an OpenVINO model with its metadata (see the module docstring).

    Attributes:
        model: the `openvino.Model` (outputs named logits, pool5, fc6, fc7).
        quantized: True for an int8 model from `c3d quantize`.
        path: the IR folder it was read from (None when converted in this process).
        metadata: the folder's `c3dnet.json` ({} when converted here).
    """

    def __init__(self, model: Any, config: C3DConfig, preprocess: Preprocess, class_names: list[str] | None,
                 feature_dims: dict[str, int], quantized: bool = False, path: Path | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.model, self.config, self.preprocess = model, config, preprocess
        self.class_names, self.feature_dims = class_names, dict(feature_dims)
        self.quantized, self.path, self.metadata = quantized, path, metadata or {}

    @classmethod
    def from_c3d(cls, model: C3D) -> OpenVinoC3D:
        """`model` converted to a float OpenVINO model (traced on the CPU; the caller's copy is not changed)."""
        import copy

        ov = require()
        if model.preprocess.volume_mean is not None:
            raise WeightsError("weights with a Caffe volume mean (c3d convert --mean-file) cannot run through "
                               "OpenVINO; use weights converted without --mean-file")
        cpu_model = copy.deepcopy(model).float().cpu().eval()
        c, t, h, w = cpu_model.input_shape
        with torch.no_grad():
            converted = ov.convert_model(OutputsGraph(cpu_model).eval(), example_input=torch.zeros(1, c, t, h, w),
                                         input=[(-1, c, t, h, w)])
        converted.inputs[0].get_tensor().set_names({INPUT_NAME})
        for output, name in zip(converted.outputs, OUTPUT_NAMES):
            output.get_tensor().set_names({name})
        return cls(converted, cpu_model.config, cpu_model.preprocess, cpu_model.class_names, cpu_model.feature_dims)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> OpenVinoC3D:
        """Read and check an IR folder from `c3d quantize`.

        Raises:
            WeightsError: no such folder, an IR without c3dnet's metadata, files other than the ones it records,
                or a graph without the inputs and outputs the metadata describes; each names the folder and what
                is missing.
        """
        from c3dnet.weights.native import check_config_dict, check_preprocess_dict

        folder = Path(folder)
        meta = read_metadata(folder)
        config = C3DConfig.from_dict(check_config_dict(folder / META_FILE, meta["config"]))
        preprocess = Preprocess.from_dict(check_preprocess_dict(folder / META_FILE, meta["preprocess"]))
        names = meta.get("class_names")
        if names is not None and not (isinstance(names, list) and len(names) == config.num_classes
                                      and all(isinstance(n, str) for n in names)):
            raise WeightsError(f"{folder / META_FILE}: class_names is not a list of {config.num_classes} names; "
                               "run `c3d quantize` again")
        for name in (XML_FILE, BIN_FILE):
            recorded = meta["files"].get(name)
            if recorded != sha256_file(folder / name):
                raise WeightsError(f"{folder / name}: not the file {META_FILE} records (its SHA-256 differs): the IR "
                                   "was made from other weights or changed after `c3d quantize`; run `c3d quantize` "
                                   "again into this folder")
        try:
            model = core().read_model(str(folder / XML_FILE), str(folder / BIN_FILE))
        except RuntimeError as e:
            raise WeightsError(f"{folder / XML_FILE}: OpenVINO cannot read this IR ({str(e).splitlines()[0][:200]}); "
                               "run `c3d quantize` again") from None
        dims = {"pool5": int(meta["feature_dims"]["pool5"]), "fc6": config.fc_dim, "fc7": config.fc_dim}
        check_graph(folder, model, config, dims)
        return cls(model, config, preprocess, names, dims, quantized=meta["precision"] == "int8", path=folder,
                   metadata=meta)

    def compile(self, precision: str) -> CompiledC3D:
        """This model compiled for the CPU at `precision` ("fp32" or "bf16" for a float model, "int8" for a
        quantized one; `inference.backends.OpenVinoBackend` checks which one applies)."""
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        return CompiledC3D(core().compile_model(self.model, "CPU", config), self.input_shape)

    def save(self, folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """Write model.xml, model.bin and c3dnet.json (with `extra` added) into `folder` (a staging folder: see
        `c3dnet.quantize`); returns the metadata written."""
        ov = require()
        ov.save_model(self.model, str(folder / XML_FILE), compress_to_fp16=False)  # fp32 stays fp32
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "precision": "int8" if self.quantized else "fp32",
            "config": self.config.to_dict(), "preprocess": self.preprocess.to_dict(), "class_names": self.class_names,
            "feature_dims": self.feature_dims, "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES),
            "files": {name: sha256_file(folder / name) for name in (XML_FILE, BIN_FILE)}, "openvino": ov.__version__,
            **extra,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return meta


def read_metadata(folder: Path) -> dict[str, Any]:
    """The checked `c3dnet.json` of an IR folder (`WeightsError` naming what is missing or wrong)."""
    from c3dnet.weights.native import loads_json

    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder (an OpenVINO model from `c3d quantize` is a folder)")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        found = sorted(p.name for p in folder.glob("*.xml"))
        what = f"an OpenVINO IR ({', '.join(found)}) without" if found else "a folder without an OpenVINO IR or"
        raise WeightsError(f"{folder}: {what} c3dnet's metadata ({META_FILE}): not written by `c3d quantize`; make "
                           "one with `c3d quantize --weights W --calib VIDEOS --out DIR`")
    missing = [name for name in (XML_FILE, BIN_FILE) if not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"{folder}: {' and '.join(missing)} missing beside {META_FILE}; run `c3d quantize` again")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise WeightsError(f"{meta_path}: larger than {MAX_META_BYTES} bytes: not c3dnet's metadata")
    meta = loads_json(meta_path, meta_path.read_bytes(), META_FILE, 4, 100_000)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{meta_path}: not c3dnet's OpenVINO metadata (format {FORMAT!r} expected); make the "
                           "folder with `c3d quantize`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{meta_path}: format_version {meta.get('format_version')!r}, this c3dnet reads "
                           f"{FORMAT_VERSION}; run `c3d quantize` again")
    needed = {"precision": str, "config": dict, "preprocess": dict, "feature_dims": dict, "files": dict}
    absent = [key for key, kind in needed.items() if not isinstance(meta.get(key), kind)]
    if absent:
        raise WeightsError(f"{meta_path}: {', '.join(absent)} missing or malformed; run `c3d quantize` again")
    if meta["precision"] not in ("fp32", "int8"):
        raise WeightsError(f"{meta_path}: precision {meta['precision']!r}, expected int8 or fp32")
    if not isinstance(meta["feature_dims"].get("pool5"), int):
        raise WeightsError(f"{meta_path}: feature_dims has no pool5 size; run `c3d quantize` again")
    return meta


def check_graph(folder: Path, model: Any, config: C3DConfig, dims: dict[str, int]) -> None:
    """`WeightsError` unless the graph has the input and the four outputs (with the widths) that `config` says."""
    outputs = {name: out for out in model.outputs for name in out.get_names()}
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        has = ", ".join(sorted(outputs)) or "none named"
        raise WeightsError(f"{folder / XML_FILE}: the IR lacks the outputs {', '.join(missing)} (it has {has}); "
                           f"extraction needs {', '.join(OUTPUT_NAMES)}: run `c3d quantize` again")
    widths = {"logits": config.num_classes, **dims}
    for name in OUTPUT_NAMES:
        shape = outputs[name].get_partial_shape()
        width = shape[shape.rank.get_length() - 1] if shape.rank.is_static else None
        if width is None or not width.is_static or width.get_length() != widths[name]:
            raise WeightsError(f"{folder / XML_FILE}: output {name} has shape {shape}, but {META_FILE} describes "
                               f"{widths[name]} values per clip: the IR is of another model; run `c3d quantize` "
                               "again")
    c, t, s = config.in_channels, config.clip_len, config.crop_size
    shape = model.inputs[0].get_partial_shape() if len(model.inputs) == 1 else None
    given = [d.get_length() if d.is_static else -1 for d in shape] if shape is not None and shape.rank.is_static \
        else None
    if given != [-1, c, t, s, s]:
        raise WeightsError(f"{folder / XML_FILE}: input shape {shape}, but {META_FILE} describes clips (N, {c}, {t}, "
                           f"{s}, {s}): the IR is of another model; run `c3d quantize` again")


class CompiledC3D:
    """A compiled OpenVINO C3D: `run(x, outputs)` on normalised clips, from any thread (one infer request per
    thread), and the kernels the CPU plugin chose."""

    def __init__(self, compiled: Any, input_shape: tuple[int, int, int, int]) -> None:
        self.compiled, self.input_shape = compiled, input_shape
        self._local = threading.local()

    def run(self, x: np.ndarray | torch.Tensor, outputs: tuple[str, ...] | list[str]) -> list[np.ndarray]:
        """The named outputs (float32 arrays) for a batch of normalised clips (N, C, T, H, W)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the OpenVINO model expects clips of shape (N, {', '.join(map(str, self.input_shape))}"
                             f"), got {x.shape}")
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: x})
        return [np.array(request.get_tensor(name).data, dtype=np.float32) for name in outputs]

    def kernels(self) -> dict[str, int]:
        """How many convolution and matrix layers run on each of the CPU plugin's kernels, e.g.
        {"Convolution brgconv_avx512_amx_I8": 8} (OpenVINO's runtime graph names them)."""
        counts: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            if kind in ("Convolution", "FullyConnected", "MatMul"):
                counts[f"{kind} {info['primitiveType'].astype(str)}"] += 1
        return dict(counts)
