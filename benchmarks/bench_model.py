"""Model-only throughput: the naive path against c3dnet's path, in one process, on random data.

Paths (--paths picks them by these names):
    naive: fp32, TF32 off, cudnn.benchmark off, eager, contiguous layout (what the seed ran).
    tf32: the same with TF32 and cudnn.benchmark on (CUDA only by default).
    c3dnet: the engine's own helpers (`c3dnet.device`): channels_last_3d, inference_mode, and on CUDA bf16
        autocast and cudnn.benchmark. On the CPU c3dnet runs fp32.
    compile: c3dnet plus torch.compile (default with --compile).
    compile-max: the same in mode "max-autotune-no-cudagraphs" (Inductor benchmarks its kernel choices; minutes
        of compiling; only when named).
    compile-bf16, compile-freeze (inference only, only when named): the compile path with the weights stored in
        bf16 instead of autocast's per-call casts, or with Inductor's `freezing` (weights folded in as constants,
        their casts and layouts done once). They tell where the compiled inference loses to the ceiling.
    compile-graphs, compile-bf16-graphs (inference only, only when named): compile and compile-bf16 in mode
        "reduce-overhead": the compiled graph replayed as CUDA graphs, so no kernel-launch gaps between batches
        (on the CPU, torch.compile runs it without graphs).
    bf16 (inference only; default on the CPU): c3dnet's path with bf16 autocast on the CPU (`--precision bf16`:
        oneDNN's AMX or AVX512-BF16 kernels where the CPU has them).
    ort, ort-int8 (inference only; default on the CPU): ONNX Runtime on the graph `c3d export` writes, fp32, and
        int8 from ONNX Runtime's static quantization (QOperator: QLinearConv, calibrated on 8 random clips).
    ov, ov-bf16, ov-int8 (inference only; default on the CPU, needs the openvino extra): OpenVINO's CPU plugin on
        the model converted as `c3d quantize` converts it: fp32, bf16 (its inference precision hint) and int8
        (NNCF's post-training quantization, `c3dnet.quantize.quantize_openvino`, on 8 random clips).

Every inference row has the max relative error of its logits beside its speed: max |logits - fp32| / max |fp32|
on the timed batch, against the model in plain PyTorch fp32; and its speed against c3dnet's own path ("vs c3dnet":
the median over rounds of the ratio within each round, the paths being timed in turn in every round).
The data are random (weights and clips): the errors of the int8 rows say how the arithmetic behaves, not what a
trained model calibrated on real videos gives (`c3d quantize` measures that, and tests/test_quantize.py).

--infer-batch takes a comma-separated list: the inference rows are then measured at each batch size (a batch-size
sweep; each size is compiled on its own, with automatic dynamic shapes off so that no size gets a dynamic graph).
A compiled path that fell back to eager mode (c3dnet's `Compiled` does on a compiler error) says so in its row, and
so does a reduce-overhead path whose graph Inductor ran without CUDA graphs (its `cudagraph_skips` counter; always
on the CPU).

Each path's time per round and each table row are printed as soon as they are measured, so a run cut off by a
time limit still shows what it finished; a path that fails (a torch.compile error, say) is reported as such and
the others go on.

Usage:
    python benchmarks/bench_model.py                      # CPU: a reduced model (width 1/4, 16x56x56)
    python benchmarks/bench_model.py --full-size          # the reference C3D (16x112x112, 101 classes)
    python benchmarks/bench_model.py --full-size --kinds inference --infer-batch 4   # the CPU precisions side by side
    python benchmarks/bench_model.py --device cuda --full-size --compile --train-batch 128 --infer-batch 256
    python benchmarks/bench_model.py --device cuda --paths compile --name model_cuda_compile   # compile alone
    python benchmarks/bench_model.py --device cuda --paths compile-graphs --kinds inference --infer-batch 128,512
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.device import autocast, inference_context, prepare_model  # noqa: E402
from c3dnet.inference.backends import Compiled  # noqa: E402
from c3dnet.model import C3D, C3DConfig, count_parameters, multiply_adds  # noqa: E402
from common import environment, markdown_table, time_per_call, write_results  # noqa: E402

CPU_KEYS = ("bf16", "ort", "ort-int8", "ov", "ov-bf16", "ov-int8")
"""The inference paths past fp32 on the CPU (in the default set there)."""
PATH_KEYS = ("naive", "tf32", "c3dnet", "compile", "compile-max", "compile-bf16", "compile-freeze", "compile-graphs",
             "compile-bf16-graphs", *CPU_KEYS)
CALIBRATION_CLIPS = 8
KINDS = ("inference", "training")


@dataclass
class Path_:
    key: str  # the name --paths selects it by
    name: str
    fast: bool  # c3dnet's helpers (autocast, channels_last) vs plain fp32
    tf32: bool
    benchmark: bool
    compile: bool
    mode: str | None = None  # torch.compile's mode
    bf16_weights: bool = False  # weights stored in bf16, no autocast (inference only)
    freezing: bool = False  # torch._inductor.config.freezing (inference only)
    runtime: str = "pytorch"  # or "onnxruntime", "openvino" (inference only)
    precision: str | None = None  # "bf16": autocast on the CPU too; for the other runtimes: fp32, bf16 or int8

    @property
    def inference_only(self) -> bool:
        return self.bf16_weights or self.freezing or self.mode == "reduce-overhead" or self.runtime != "pytorch" \
            or self.precision is not None


# Keyed by (pass, path, batch): each row's own model, compiled on its own (a sweep's sizes, inference and training).
EAGER_FALLBACK: set[tuple[str, str, int]] = set()  # torch.compile failed and ran eagerly (c3dnet's Compiled)
GRAPHS_SKIPPED: set[tuple[str, str, int]] = set()  # reduce-overhead: Inductor ran the graph without CUDA graphs
ERRORS: dict[tuple[str, int], float] = {}  # (path, batch) -> max relative error of the logits against plain fp32
REFERENCE: dict[int, torch.Tensor] = {}  # batch -> plain PyTorch fp32 logits of `bench_input`
ROUNDS: dict[tuple[str, str], list[float]] = {}  # (pass, path) -> seconds per step of each round, in order


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def set_backend_flags(p: Path_) -> None:
    torch.backends.cuda.matmul.allow_tf32 = p.tf32
    torch.backends.cudnn.allow_tf32 = p.tf32
    torch.backends.cudnn.benchmark = p.benchmark


def make_model(config: C3DConfig, p: Path_, device: torch.device, state: dict) -> torch.nn.Module:
    model = C3D(config)
    model.load_state_dict(state)
    model = prepare_model(model, device) if p.fast else model.to(device)
    if p.bf16_weights:
        model = model.to(torch.bfloat16)
    return Compiled(model, mode=p.mode) if p.compile else model


def bench_input(config: C3DConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """The same random clips (batch, 3, T, H, W) for every path, so that their logits can be compared."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.clip_len, config.crop_size, config.crop_size, generator=g)


def record_error(p: Path_, config: C3DConfig, state: dict, batch: int, logits: torch.Tensor | np.ndarray) -> None:
    """ERRORS[(p.name, batch)]: max |logits - fp32| / max |fp32| on `bench_input`, fp32 from plain PyTorch."""
    if batch not in REFERENCE:
        model = C3D(config)
        model.load_state_dict(state)
        with torch.no_grad():
            REFERENCE[batch] = model.eval()(bench_input(config, batch))
    ref = REFERENCE[batch].double()
    got = torch.as_tensor(np.asarray(logits.float().cpu() if isinstance(logits, torch.Tensor) else logits)).double()
    ERRORS[(p.name, batch)] = float((got - ref).abs().max() / ref.abs().max())


def runtime_step(config: C3DConfig, p: Path_, state: dict, batch: int) -> Callable[[], None]:
    """A step of ONNX Runtime or OpenVINO on the CPU (the graphs `c3d export` and `c3d quantize` make)."""
    model = C3D(config)
    model.load_state_dict(state)
    model.eval()
    x = bench_input(config, batch).numpy()
    calibration = bench_input(config, CALIBRATION_CLIPS, seed=1)
    if p.runtime == "openvino":
        from c3dnet.inference.openvino import OpenVinoC3D
        from c3dnet.quantize import quantize_openvino

        ov_model = quantize_openvino(model, calibration) if p.precision == "int8" else OpenVinoC3D.from_c3d(model)
        compiled = ov_model.compile(p.precision or "fp32")
        run = lambda: compiled.run(x, ["logits"])[0]  # noqa: E731
    else:
        session = ort_session(model, calibration, p.precision == "int8")
        run = lambda: session.run(["logits"], {"clips": x})[0]  # noqa: E731
    record_error(p, config, state, batch, run())

    def step() -> None:
        run()

    return step


def ort_session(model: C3D, calibration: torch.Tensor, int8: bool):  # -> onnxruntime.InferenceSession
    """ONNX Runtime on `model` exported as `c3d export` exports it; with `int8`, statically quantized (QOperator:
    QLinearConv and QLinearMatMul, per-tensor, calibrated on `calibration`)."""
    import tempfile

    import onnxruntime as ort

    from c3dnet.export import INPUT_NAME, export_onnx

    with tempfile.TemporaryDirectory(prefix="bench_ort.") as tmp:
        path = Path(tmp) / "c3d.onnx"
        export_onnx(model, path, verify=False)
        if int8:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter([{INPUT_NAME: c[None].numpy()} for c in calibration])

                def get_next(self) -> dict | None:
                    return next(self.items, None)

            quant_pre_process(str(path), str(Path(tmp) / "pre.onnx"))  # shapes for the quantizer
            quantize_static(str(Path(tmp) / "pre.onnx"), str(Path(tmp) / "int8.onnx"), Reader(),
                            quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            path = Path(tmp) / "int8.onnx"
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def inference_step(config, p, device, state, batch) -> Callable[[], None]:
    if p.runtime != "pytorch":
        return runtime_step(config, p, state, batch)
    model = make_model(config, p, device, state).eval()
    x = bench_input(config, batch).to(device)
    if p.bf16_weights:
        x = x.to(torch.bfloat16)
    if p.fast:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = lambda: inference_context(device, amp=not p.bf16_weights, precision=p.precision)  # noqa: E731
    else:
        ctx = torch.no_grad
    if not p.compile:  # a compiled path's first call compiles: its logits would cost a compile out of the timing
        with ctx():
            record_error(p, config, state, batch, model(x))

    freeze = contextlib.nullcontext
    if p.freezing:  # scoped to this path's calls: the model is compiled at its first call
        import torch._inductor.config as inductor_config

        freeze = lambda: inductor_config.patch(freezing=True)  # noqa: E731

    first = [True]

    def step() -> None:
        skips = _cudagraph_skips() if first[0] else 0
        with ctx(), freeze():
            model(x)
        if getattr(model, "failed", False):
            EAGER_FALLBACK.add(("inference", p.name, batch))
        if first[0] and p.mode == "reduce-overhead" and _cudagraph_skips() > skips:
            # the compile at this first call gave up on CUDA graphs (on a CPU: always)
            GRAPHS_SKIPPED.add(("inference", p.name, batch))
        first[0] = False

    return step


def train_step(config, p, device, state, batch) -> Callable[[], None]:
    model = make_model(config, p, device, state).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, config.clip_len, config.crop_size, config.crop_size, device=device)
    if p.fast:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(config.num_classes, (batch,), device=device)
    amp = (lambda: autocast(device)) if p.fast else contextlib.nullcontext

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 40.0)
        opt.step()
        if getattr(model, "failed", False):
            EAGER_FALLBACK.add(("training", p.name, batch))

    return step


def _failure(kind: str, p: Path_, e: Exception) -> str:
    """Print why path `p` stopped and return its table entry: "OOM" or "failed"."""
    print(f"{kind} {p.name}: failed: {type(e).__name__}: {e}"[:2000], flush=True)
    return "OOM" if isinstance(e, torch.OutOfMemoryError) else "failed"


def measure(kind: str, paths, make_step, device, warmup: int, iters: int, rounds: int,
            min_seconds: float) -> dict[str, tuple[float, float] | str]:
    """Median seconds per step and peak GiB of each path, the paths interleaved round by round.

    Interleaving spreads clock boosts, cache and allocator state evenly over the paths, so the ratio between
    them is not an artefact of which ran first. A path that raises (out of memory, a torch.compile error) stops
    there: it keeps the median of the rounds it finished, or with none gets "OOM" or "failed".
    """
    steps, status = {}, {}
    for p in paths:
        set_backend_flags(p)
        try:
            steps[p.name] = (p, make_step(p))
        except Exception as e:
            steps[p.name], status[p.name] = None, _failure(kind, p, e)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float] = {}
    for r in range(rounds):
        for name, entry in steps.items():
            if entry is None:
                continue
            p, step = entry
            set_backend_flags(p)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                times[name].append(time_per_call(step, device, warmup if r == 0 else 1, iters, min_seconds))
            except Exception as e:
                steps[name], status[name] = None, _failure(kind, p, e)
                continue
            print(f"{kind} round {r + 1}/{rounds} {name}: {times[name][-1] * 1e3:.1f} ms/step", flush=True)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    ROUNDS.update({(kind, name): t for name, t in times.items()})
    return {name: (statistics.median(times[name]), peaks.get(name, float("nan"))) if times[name] else status[name]
            for name in times}


def round_ratio(kind: str, name: str, base: str) -> float | None:
    """The median over rounds of (`base`'s seconds / `name`'s seconds) in the same round: on a machine whose load
    changes during the run, a ratio of neighbours in time says more than a ratio of medians."""
    a, b = ROUNDS.get((kind, name), []), ROUNDS.get((kind, base), [])
    pairs = [y / x for x, y in zip(a, b)]
    return statistics.median(pairs) if pairs and len(a) == len(b) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--full-size", action="store_true", help="the reference C3D (default on CUDA)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (the compile path)")
    ap.add_argument("--paths", default=None,
                    help=f"comma-separated paths among {','.join(PATH_KEYS)} (default naive,tf32,c3dnet on CUDA, "
                         "naive,c3dnet on the CPU, plus compile with --compile)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated passes among inference,training")
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--infer-batch", default=None,
                    help="inference batch size, or a comma-separated list: a sweep (default 256 on CUDA, 8 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path; the median is reported")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="time each path for at least this long per round (default 2 on CUDA, 0 on the CPU)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--name", default=None, help="results file name (default model_<device>)")
    args = ap.parse_args(argv)
    keys = args.paths.split(",") if args.paths else None
    kinds = args.kinds.split(",")
    if keys is not None and not set(keys) <= set(PATH_KEYS):
        ap.error(f"--paths: unknown {sorted(set(keys) - set(PATH_KEYS))}; choose among {','.join(PATH_KEYS)}")
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}; choose among {','.join(KINDS)}")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    full = args.full_size or gpu
    config = C3DConfig(num_classes=101) if full else C3DConfig(num_classes=101, width_mult=0.25, fc_dim=1024,
                                                                crop_size=56)
    train_batch = args.train_batch or (128 if gpu else 4)
    infer_batches = [int(b) for b in args.infer_batch.split(",")] if args.infer_batch else [256 if gpu else 8]
    if len(infer_batches) > 1:  # each size its own static graph, and room in the cache for all of them
        import torch._dynamo.config as dynamo_config

        dynamo_config.automatic_dynamic_shapes = False
        for limit in ("cache_size_limit", "recompile_limit"):
            if hasattr(dynamo_config, limit):
                setattr(dynamo_config, limit, max(64, getattr(dynamo_config, limit)))
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    iters = args.iters or 3
    min_seconds = args.min_seconds if args.min_seconds is not None else (2.0 if gpu else 0.0)
    torch.manual_seed(0)
    state = C3D(config).state_dict()
    macs = multiply_adds(config)

    all_paths = [
        Path_("naive", "naive fp32", fast=False, tf32=False, benchmark=False, compile=False),
        Path_("tf32", "fp32 + TF32", fast=False, tf32=True, benchmark=True, compile=False),
        Path_("c3dnet", "c3dnet" + (" (bf16, channels_last_3d)" if gpu else " (fp32, channels_last_3d)"),
              fast=True, tf32=True, benchmark=True, compile=False),
        Path_("compile", "c3dnet + torch.compile", fast=True, tf32=True, benchmark=True, compile=True),
        Path_("compile-max", "c3dnet + torch.compile max-autotune", fast=True, tf32=True, benchmark=True,
              compile=True, mode="max-autotune-no-cudagraphs"),
        Path_("compile-bf16", "c3dnet + torch.compile, bf16 weights", fast=True, tf32=True, benchmark=True,
              compile=True, bf16_weights=True),
        Path_("compile-freeze", "c3dnet + torch.compile, freezing", fast=True, tf32=True, benchmark=True,
              compile=True, freezing=True),
        Path_("compile-graphs", "c3dnet + torch.compile reduce-overhead (CUDA graphs)", fast=True, tf32=True,
              benchmark=True, compile=True, mode="reduce-overhead"),
        Path_("compile-bf16-graphs", "c3dnet + torch.compile reduce-overhead (CUDA graphs), bf16 weights", fast=True,
              tf32=True, benchmark=True, compile=True, mode="reduce-overhead", bf16_weights=True),
        Path_("bf16", "PyTorch bf16 autocast (channels_last_3d)", fast=True, tf32=False, benchmark=False,
              compile=False, precision="bf16"),
        Path_("ort", "ONNX Runtime fp32", False, False, False, False, runtime="onnxruntime", precision="fp32"),
        Path_("ort-int8", "ONNX Runtime int8 (QLinearConv)", False, False, False, False, runtime="onnxruntime",
              precision="int8"),
        Path_("ov", "OpenVINO fp32", False, False, False, False, runtime="openvino", precision="fp32"),
        Path_("ov-bf16", "OpenVINO bf16", False, False, False, False, runtime="openvino", precision="bf16"),
        Path_("ov-int8", "OpenVINO int8 (NNCF)", False, False, False, False, runtime="openvino", precision="int8"),
    ]
    if keys is None:
        keys = ["naive", "c3dnet"] + (["tf32"] if gpu else list(CPU_KEYS)) + (["compile"] if args.compile else [])
    paths = [p for p in all_paths if p.key in keys]

    headers = ["pass", "path", "batch", "clips/s", "TFLOP/s", "peak GiB", "vs naive", "vs c3dnet", "max rel. err"]
    rows, data = [], {"config": config.to_dict(), "parameters": count_parameters(C3D(config)), "rows": []}
    passes = [("inference", inference_step, b, 2) for b in infer_batches] + [("training", train_step, train_batch, 6)]
    for kind, make, batch, flop_mult in passes:
        if kind not in kinds or (kind == "training" and args.skip_train):
            continue
        kind_paths = [p for p in paths if kind == "inference" or not p.inference_only]
        if not kind_paths:
            continue
        results = measure(kind, kind_paths, lambda p, make=make, batch=batch: make(config, p, device, state, batch),
                          device, warmup, iters, args.rounds, min_seconds)
        naive, own = results.get(all_paths[0].name), results.get(all_paths[2].name)
        base = batch / naive[0] if isinstance(naive, tuple) else None
        own_rate = batch / own[0] if isinstance(own, tuple) else None
        for p in kind_paths:
            result = results[p.name]
            key = (kind, p.name, batch)
            name = p.name + (" (torch.compile failed: ran eagerly)" if key in EAGER_FALLBACK else "") + \
                (" (CUDA graphs skipped)" if key in GRAPHS_SKIPPED else "")
            if isinstance(result, str):
                rows.append([kind, name, batch, result, "-", "-", "-", "-", "-"])
                data["rows"].append(dict(kind=kind, path=p.name, batch=batch, error=result))
            else:
                seconds, peak = result
                clips_s = batch / seconds
                tflops = clips_s * macs * flop_mult / 1e12
                ratio = clips_s / base if base else None
                own_ratio = round_ratio(kind, p.name, all_paths[2].name) if own_rate else None
                error = ERRORS.get((p.name, batch)) if kind == "inference" else None
                rows.append([kind, name, batch, clips_s, tflops, peak, f"{ratio:.2f}x" if ratio else "-",
                             f"{own_ratio:.2f}x" if own_ratio else "-", f"{error:.1e}" if error is not None else "-"])
                data["rows"].append(dict(kind=kind, path=p.name, batch=batch, clips_per_s=clips_s, tflops=tflops,
                                         peak_gib=peak, ratio=ratio, ratio_c3dnet=own_ratio, max_rel_error=error,
                                         eager_fallback=key in EAGER_FALLBACK,
                                         cudagraphs_skipped=key in GRAPHS_SKIPPED))
            print("row:", markdown_table(headers, rows[-1:]).splitlines()[-1], flush=True)
        if gpu:
            torch.cuda.empty_cache()
    size = "reference C3D 16x112x112" if full else "reduced C3D (width 1/4, fc 1024) 16x56x56"
    table = markdown_table(headers, rows)
    write_results(args.name or f"model_{device.type}", f"Model-only throughput, {size}", environment(device), table,
                  data, "python benchmarks/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
