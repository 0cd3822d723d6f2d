"""Shared pieces of the benchmark scripts: environment description, timing, and table output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

# Where the tables go: benchmarks/results/, or $C3DNET_BENCH_RESULTS (gpu.sh's dry run on a CPU writes elsewhere).
RESULTS = Path(os.environ.get("C3DNET_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def environment(device: torch.device) -> dict[str, str]:
    """The facts a reader needs to compare a table with another: device, PyTorch, CUDA, cuDNN, CPU count."""
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda) if device.type == "cuda" else "-",
        "cudnn": str(torch.backends.cudnn.version()) if device.type == "cuda" else "-",
        "cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
                  min_seconds: float = 0.0) -> float:
    """Mean wall-clock seconds of `fn()` after `warmup` untimed calls, synchronising the device.

    Runs at least `iters` calls and, with `min_seconds`, keeps calling until that much time has passed, so a
    slow path is timed over a few calls and a fast one over many.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    n = 0
    while n < iters or time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - start) / n


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            if v != v:  # NaN: not measured on this device
                return "-"
            return f"{v:.3g}" if abs(v) < 10 else (f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}")
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, env: dict[str, str], table: str, data: dict, command: str) -> Path:
    """Print the table and save it (markdown + JSON) under benchmarks/results/ as NAME.md / NAME.json."""
    from c3dnet.fileio import atomic_write_text

    header = ", ".join(f"{k} {v}" for k, v in env.items())
    text = f"## {title}\n\n`{command}`\n\n{header}\n\n{table}\n"
    print(text, flush=True)
    path = RESULTS / f"{name}.md"
    atomic_write_text(path, text)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps({"env": env, "command": command, **data}, indent=2))
    return path
