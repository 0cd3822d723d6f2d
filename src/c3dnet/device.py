"""Device selection and the GPU fast paths shared by training, testing, prediction and feature extraction.

On CUDA: bf16 autocast, channels_last_3d memory format and cudnn.benchmark. On the CPU: fp32 in channels_last_3d,
oneDNN's fast layout for 3D convolutions (1.4-1.6x faster inference, 1.2x training, than the default layout on
the development machines' CPUs; `python benchmarks/bench_model.py` measures it).

On the CPU `precision="bf16"` runs bf16 autocast too (oneDNN's AMX or AVX512-BF16 kernels, where the CPU has
them: `cpu_bf16_isa`; elsewhere bf16 is emulated and slower than fp32, and `check_cpu_bf16` warns), and
`onednn_kernels` reports which oneDNN kernels a call ran.

Selecting a device (`select_device`) changes nothing; `configure_for(device)` is the one call that sets this
process up for it (on CUDA: the current device, cudnn.benchmark, one intra-op thread), and every entry point
(train, test, predict, extract, the notebook API) makes it explicitly.

Example:
    >>> from c3dnet.device import configure_for, select_device, prepare_model, inference_context, to_input
    >>> device = configure_for(select_device("auto"))        # doctest: +SKIP
    >>> model = prepare_model(model, device)                 # doctest: +SKIP
    >>> with inference_context(device):                      # doctest: +SKIP
    ...     logits = model(to_input(clips_uint8, model.preprocess, device))
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from c3dnet.distinfo import DistInfo
from c3dnet.errors import ConfigError
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

log = get_logger(__name__)

T = TypeVar("T")


def select_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """"auto" (or None) -> CUDA when available, else the CPU; "cuda" without a GPU raises `ConfigError`.

    Under torchrun, `local_rank` picks this process's GPU; a plain "cuda" names the current one. Nothing is
    changed: see `configure_for`.
    """
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available in this PyTorch build/machine; use --device cpu")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
        device = torch.device(name)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device
    if name != "cpu":
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device("cpu")


def configure_for(device: torch.device) -> torch.device:
    """Set this process up to run models on `device`, and return it.

    On CUDA: `device` becomes the current one, cudnn.benchmark is on (C3D's input shapes are fixed, so picking the
    fastest kernels once pays), the PyTorch version is checked (`check_torch_version`) and the process keeps one
    intra-op thread (`host_threads_for_gpu`). On the CPU nothing changes.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        check_torch_version()
        host_threads_for_gpu()
    return device


def host_threads_for_gpu() -> None:
    """One intra-op thread in a process that drives a GPU, unless OMP_NUM_THREADS says otherwise.

    Its CPU work is then copying batches (memory-bound; pinning them, say), and each torch copy wakes every
    intra-op thread, which spins on afterwards (about 10 ms of CPU per thread and copy on the development
    machine): with 16 threads that takes cores from the loader processes, which need them.
    """
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
        log.debug("intra-op threads %d -> 1: this process drives a GPU", torch.get_num_threads())
        torch.set_num_threads(1)


def check_torch_version() -> None:
    """Warn on PyTorch 2.9.0, whose cuDNN path for bf16/fp16 3D convolutions was disabled (about 4x slower)."""
    if torch.__version__.split("+")[0] == "2.9.0":
        log.warning(
            "PyTorch 2.9.0 runs bf16 3D convolutions without cuDNN (about 4x slower); "
            "upgrade to 2.9.1 (cuDNN >= 9.15) or 2.10+, or pass --set train.amp=false"
        )


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `enabled`, and on the CPU when `cpu` is also set (training keeps the CPU in
    fp32: it never passes `cpu`); otherwise a no-op."""
    if enabled and (device.type == "cuda" or (cpu and device.type == "cpu")):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_context(device: torch.device, amp: bool = True, precision: str | None = None) -> Iterator[None]:
    """`torch.inference_mode` plus bf16 autocast: on CUDA when `amp`, or on any device when `precision` is given
    ("bf16": autocast, on the CPU too; "fp32": none)."""
    enabled = amp if precision is None else precision == "bf16"
    with torch.inference_mode(), autocast(device, enabled, cpu=precision is not None):
        yield


BF16_ISAS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))
"""CPU features with native bf16 matrix instructions (the flag's name, as torch and /proc/cpuinfo spell it), best
first. Without one of them oneDNN emulates bf16 through fp32, slower than fp32 itself."""
INT8_ISAS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("i8mm", "Arm I8MM"))
"""CPU features with int8 dot-product instructions, best first (int8 runs without them too, with less gain)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set features: torch's own probe (`torch.cpu.get_capabilities`, cpuinfo), else the
    flags of Linux's /proc/cpuinfo; empty where neither says."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        try:
            return frozenset(k for k, v in probe().items() if v is True)
        except (RuntimeError, AttributeError):  # a build without cpuinfo
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_isa() -> str | None:
    """The CPU's native bf16 instructions ("AMX-BF16", "AVX512-BF16", ...), or None when it has none."""
    return next((name for flag, name in BF16_ISAS if flag in cpu_flags()), None)


def cpu_int8_isa() -> str | None:
    """The CPU's int8 dot-product instructions ("AMX-INT8", "AVX512-VNNI", ...), or None."""
    return next((name for flag, name in INT8_ISAS if flag in cpu_flags()), None)


@functools.cache
def check_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 natively; warns once per process when it does not (bf16 is then emulated and
    slower than fp32)."""
    if cpu_bf16_isa() is None:
        log.warning("--precision bf16: this CPU has no native bf16 instructions (AVX512-BF16 or AMX-BF16), so bf16 "
                    "runs emulated and slower than fp32; use --precision fp32, or int8 (a model from `c3d quantize`)")
        return False
    return True


def onednn_kernels(call: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """`call()`, and the oneDNN kernels it ran: {"onednn": version, "isa": ..., "kernels": {"convolution
    brg_conv_fwd:avx10_1_512_amx": 8, ...}} (empty "kernels" where PyTorch ran its own, e.g. fp32 matmuls).

    oneDNN reports its kernels only as verbose lines printed to standard output, so file descriptor 1 is sent to a
    temporary file for the call; every other line written meanwhile is written back to it afterwards.
    """
    report: dict[str, Any] = {"kernels": {}}
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile("w+b") as capture:
            os.dup2(capture.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    result = call()
            finally:
                sys.stdout.flush()
                _flush_c_stdout()
                os.dup2(saved, 1)
            capture.seek(0)
            others = parse_onednn_verbose(capture.read().decode("utf-8", "replace"), report)
        if others:
            os.write(1, others.encode())
    finally:
        os.close(saved)
    return result, report


def parse_onednn_verbose(text: str, report: dict[str, Any]) -> str:
    """Fill `report` from oneDNN's verbose lines in `text`; the other lines, to be written back."""
    others = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("onednn_verbose,"):
            others.append(line)
            continue
        fields = line.rstrip("\n").split(",")
        if "info" in fields[:4]:
            detail = fields[-1]
            if detail.startswith("oneDNN "):
                report["onednn"] = detail.split(" (")[0].removeprefix("oneDNN ")
            elif detail.startswith("isa:"):
                report["isa"] = detail.removeprefix("isa:")
        elif len(fields) > 6 and fields[3] == "exec" and fields[5] != "reorder":  # v1,primitive,exec,cpu,kind,impl
            key = f"{fields[5]} {fields[6]}"
            report["kernels"][key] = report["kernels"].get(key, 0) + 1
    return "".join(others)


def _flush_c_stdout() -> None:
    """Flush the C library's stdout buffer (where oneDNN prints), so nothing of it lands after fd 1 is restored."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


def memory_format(device: torch.device, channels_last: bool = True) -> torch.memory_format:
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """Move a model to `device`, in channels_last_3d (the fast layout of cuDNN's and oneDNN's 3D convolutions)."""
    return model.to(device=device, memory_format=memory_format(device, channels_last))


def to_input(
    clips: torch.Tensor, preprocess: Preprocess, device: torch.device, channels_last: bool = True
) -> torch.Tensor:
    """uint8 RGB clips (..., 3, T, H, W) on any device -> normalised float32 model input on `device`.

    The uint8 copy is what crosses the bus (4x less than float); normalisation runs on the device.
    """
    from c3dnet.data.transforms import normalize

    x = clips.to(device, non_blocking=True)
    x = normalize(x, preprocess)
    if x.ndim == 5:
        x = x.contiguous(memory_format=memory_format(device, channels_last))
    return x


def loader_workers(setting: int | str | None, device: torch.device) -> int:
    """Data-loader worker processes: `setting` itself, or for "auto" (and None) one per CPU core this process
    may use, less two for the training loop and the pinning thread, at most 16, on a GPU (torchrun's
    LOCAL_WORLD_SIZE processes share the cores); on the CPU, 1, since the model needs the cores."""
    if setting not in ("auto", None):
        return int(setting)
    if device.type != "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = cores // max(1, DistInfo.from_env().local_world_size)
    return max(1, min(16, share - 2))
