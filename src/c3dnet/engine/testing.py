"""The reference test protocol as one library call: `test_weights(weights, data, options) -> TestRun`.

`c3d test`, the demo, `c3d lite` and `benchmarks/bench_e2e.py` all test through this one function, so the steps
cannot drift apart: load the weights, read the test subset, check the class count, build the dataset (10
evenly spaced clips a video by default, centre crop, the weights' own preprocessing), shard it across
torchrun's processes, load it with the resolved worker count, optionally compile the model, and aggregate
the clip scores per video (`c3dnet.engine.evaluate`).

Example:
    >>> from c3dnet.engine.testing import TestOptions, test_weights
    >>> run = test_weights("work_dirs/c3d/last.safetensors", "data/UCF-101")              # doctest: +SKIP
    >>> run.result.top1, run.result.clips_per_video                                        # doctest: +SKIP
    (0.83, 10)
    >>> options = TestOptions.from_config(cfg, device="cpu")  # a training recipe's test settings
    >>> run = test_weights(model, source, options)                                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import torch

from c3dnet.data.sources import Source
from c3dnet.engine.config import TrainConfig
from c3dnet.engine.evaluate import Average, EvalResult
from c3dnet.errors import C3DError, ConfigError, DataError
from c3dnet.inference.backends import PRECISIONS, Backend
from c3dnet.log import get_logger
from c3dnet.model import C3D

log = get_logger(__name__)


@dataclass(frozen=True)
class TestOptions:
    """How to test. The defaults are the reference protocol as `c3d test` runs it.

    Attributes:
        split: official split number whose test subset is scored (ignored when a `Source` is given).
        splits_dir: folder with the official split files, if not inside or beside the data.
        clips: clips per video.
        average: "score" (clip logits averaged, the seed) or "prob" (softmax probabilities, mmaction2).
        batch_size: videos per batch, each of `clips` clips; None: 16 on a GPU, 4 on the CPU.
        workers: data-loader processes; "auto" or None: `c3dnet.device.loader_workers`' choice.
        device: "auto", "cpu", "cuda[:N]" (under torchrun each process takes its LOCAL_RANK GPU).
        amp: bf16 autocast on CUDA (False: fp32 where `precision` is "auto").
        precision: "auto", "fp32", "bf16" or "int8" (`c3d test --precision`; int8: a folder from `c3d quantize`).
        channels_last: the channels_last_3d memory format (the fast one of cuDNN's and oneDNN's 3D convolutions).
        compile: torch.compile the model for inference (`inference.backends.Compiled`).
        skip_bad: log and skip unreadable videos and annotation lines instead of failing.
        autorotate: turn video frames as their display matrix says (FFmpeg's default); False keeps the coded
            orientation. Test as the weights were trained (`data.autorotate`).
        progress: a progress bar (on the main process only).
        fps: sample each video at this frame rate by presentation time before choosing its clips (None: its own
            frames); `source_fps`: the frame rate of frame folders without recorded timestamps.
    """

    __test__ = False  # a library class, not a pytest test class

    split: int = 1
    splits_dir: str | Path | None = None
    clips: int = 10
    average: Average = "score"
    batch_size: int | None = None
    workers: int | Literal["auto"] | None = None
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    skip_bad: bool = False
    autorotate: bool = True
    progress: bool = False
    fps: Fraction | None = None
    source_fps: Fraction | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.clips < 1:
            problems.append(f"clips must be >= 1, got {self.clips}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if not (self.workers in ("auto", None) or (isinstance(self.workers, int) and self.workers >= 0)):
            problems.append(f"workers must be >= 0, 'auto' or None, got {self.workers!r}")
        if self.average not in ("score", "prob"):
            problems.append(f"average must be 'score' or 'prob', got {self.average!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if problems:
            raise ConfigError(f"test options: {'; '.join(problems)}")

    @classmethod
    def from_config(cls, cfg: TrainConfig, **changes: object) -> TestOptions:
        """The test settings of a training recipe: its split, clips, validation batch size, workers, averaging,
        autocast, memory format, skip_bad, autorotate and fps; `changes` set other fields (device, progress, ...)."""
        d, t = cfg.data, cfg.train
        fps, source_fps = d.rates()
        options = cls(split=d.split, splits_dir=d.splits_dir, clips=d.num_clips, average=t.average,
                      batch_size=d.val_batch_size, workers=d.workers, amp=t.amp, channels_last=t.channels_last,
                      skip_bad=d.skip_bad, autorotate=d.autorotate, fps=fps, source_fps=source_fps)
        return dataclasses.replace(options, **changes)


@dataclass
class TestRun:
    """What `test_weights` measured, and what it tested (for reports).

    Attributes:
        result: the metrics and per-video scores, in video-index order (every video, gathered across ranks).
        backend: what ran the model (`inference.backends`): its device, precision and weights.
        class_names: the dataset's classes (label i is `class_names[i]`).
        videos: the test videos, in video-index order.
        device: where the model ran.
        seconds: the whole call, loading included.
        data_wait: the fraction of the evaluation spent waiting for the loader.
        is_main: True on the process that should write reports (rank 0, or the only one).
    """

    __test__ = False

    result: EvalResult
    backend: Backend
    class_names: list[str]
    videos: list[Path]
    device: torch.device
    seconds: float
    data_wait: float
    is_main: bool = True


def test_weights(
    weights: str | Path | C3D | Backend,
    data: str | Path | Source,
    options: TestOptions | None = None,
) -> TestRun:
    """Test `weights` on the test subset of `data` with the reference protocol (see the module docstring).

    Args:
        weights: a weight file (any format `load_model` reads, or an `.onnx` file from `c3d export`), a `C3D`
            (moved to the device and put in eval mode in place) or a backend (`inference.backends`).
        data: any dataset `load_source` reads (its test subset of `options.split` is scored), or a `Source`.
        options: `TestOptions()` (the reference protocol) when None.

    Returns:
        A `TestRun`. Under torchrun every rank returns the metrics over all videos; `is_main` says which one
        should report them.

    Raises:
        DataError: unreadable data, or a class count other than the model's.
        WeightsError: an unreadable weight file.
        ConfigError: an unusable device or option.
    """
    import torch.distributed as dist

    from c3dnet.engine.distributed import cleanup_distributed, init_distributed

    options = options or TestOptions()
    start = time.perf_counter()
    owns_group = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(options.device)
    try:
        run = _test(weights, data, options, dist_info)
    finally:
        if owns_group:
            cleanup_distributed()
    run.seconds = time.perf_counter() - start
    return run


test_weights.__test__ = False  # type: ignore[attr-defined]  # pytest would collect it where tests import it


def _test(weights: str | Path | C3D | Backend, data: str | Path | Source, options: TestOptions, dist_info) -> TestRun:
    from c3dnet.data.dataset import ClipDataset, worker_init_fn
    from c3dnet.data.epoch_order import ResumableSampler
    from c3dnet.data.sources import load_source
    from c3dnet.device import loader_workers
    from c3dnet.engine.evaluate import evaluate
    from c3dnet.forks import loader_context
    from c3dnet.inference.backends import load_backend, precision_of
    from c3dnet.inference.runner import ClipRunner

    backend = load_backend(weights, options.device, precision_of(options.precision, options.amp),
                           compile=options.compile, progress=options.progress,
                           local_rank=dist_info.local_rank if dist_info.is_distributed else None,
                           channels_last=options.channels_last)
    device = backend.device
    weights_name = backend.source or "the model"
    if isinstance(data, Source):
        source, data_name = data, str(data.root)
    else:
        source = load_source(data, "test", split=options.split, splits_dir=options.splits_dir,
                             skip_bad=options.skip_bad)
        data_name = str(data)
    if len(source.class_names) != backend.num_classes:
        raise DataError(f"{data_name}: {len(source.class_names)} classes, but {weights_name} predicts "
                        f"{backend.num_classes}; test on the dataset the weights were trained for")
    if backend.class_names is not None and list(backend.class_names) != list(source.class_names):
        log.warning("%s: class names differ from %s's; scoring by class index", data_name, weights_name)
    dataset = ClipDataset(source.records, "test", backend.preprocess, num_clips=options.clips,
                          skip_bad=options.skip_bad, autorotate=options.autorotate, fps=options.fps,
                          source_fps=options.source_fps)
    # Each rank scores every world_size-th video; the padding repeats are dropped when the scores are gathered.
    sampler = ResumableSampler(len(dataset), False, 0, dist_info.rank, dist_info.world_size)
    workers = loader_workers(options.workers, device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size or (16 if device.type == "cuda" else 4), sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
        multiprocessing_context=loader_context(workers),
    )
    log.info("testing %s on %d videos x %d clips (%s averaged) on %s", weights_name, len(dataset), options.clips,
             "logits" if options.average == "score" else "probabilities", device)
    runner = ClipRunner(backend, "logits")
    timed = _TimedBatches(loader)
    t0 = time.perf_counter()
    try:
        result = evaluate(runner, timed, average=options.average, progress=options.progress and dist_info.is_main)
    except DataError as e:
        raise _one_line(e, options.skip_bad) from None
    data_wait = timed.wait / max(time.perf_counter() - t0, 1e-9)
    return TestRun(result=result, backend=backend, class_names=list(source.class_names),
                   videos=[r.path for r in source.records], device=device, seconds=0.0, data_wait=data_wait,
                   is_main=dist_info.is_main)


def unwrap_worker_error(error: C3DError) -> C3DError:
    """A c3dnet error raised in a DataLoader worker process, as it was raised there.

    The DataLoader re-raises a worker's error in the main process as the same type, with the worker's whole
    traceback as its message ("Caught DataError in DataLoader worker process 0. Original Traceback ...": some 50
    lines, the file named on the last). This gives back the error with its own message; any other error as it is.
    """
    text, cls = str(error), type(error)
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    cut = text.rfind(marker)
    if not (text.startswith("Caught ") and "Original Traceback" in text) or cut < 0:
        return error
    return cls(text[cut + len(marker):].strip())


def _one_line(error: DataError, skip_bad: bool) -> DataError:
    """An unreadable video's error as it was raised in a loader process (not the loader's 50-line traceback),
    saying what to do."""
    error = unwrap_worker_error(error)
    if skip_bad or "skip-bad" in str(error):
        return error
    return type(error)(f"{error}; pass --skip-bad to leave such videos out, or remove it from the dataset")


class _TimedBatches:
    """A loader's batches, adding up the seconds spent waiting for each one."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader, self.wait = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        while True:
            tick = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.wait += time.perf_counter() - tick
            yield batch

