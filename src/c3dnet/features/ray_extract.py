"""`c3d extract --ray`: extraction across a Ray cluster, into the same output store as a plain `c3d extract`.

The driver (this process) plans and writes; the cluster decodes and runs the model, on Ray Data's streaming
executor (backpressure, task retries, actor restarts):

    records still to do (finished videos filtered out: a rerun resumes)
      -> decode tasks on CPUs (`ray_stages.decode_video`: c3dnet's frame-accurate decoder, bounded clip chunks)
      -> an actor pool running the backend (`ray_stages.ClipActor`, on GPUs or CPUs)
      -> the driver: each video's rows into a `VideoJob`, published by the `WriterPool` of a plain extraction.

Only the driver writes, so each video is published once, atomically, whatever the cluster retries: rows that a
retried task sends again are recognised by their view number and dropped. A node that dies loses nothing: Ray
reruns its tasks and restarts its actors elsewhere. A driver that dies leaves temporaries that look like nothing
finished and locks of a dead process; the rerun takes both over and goes on from what the folder says. The
output folder must be one path that every node sees (`check_storage` proves it on every node before any work).

Example:
    >>> spec = ModelSpec("c3d.safetensors", "fc6")                                            # doctest: +SKIP
    >>> extract_ray(records, spec, "/shared/feats", ExtractOptions(), RayOptions("auto"))     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from c3dnet.errors import C3DError, ConfigError, DataError
from c3dnet.features import ray_probe
from c3dnet.features.manifest import output_keys
from c3dnet.features.options import ExtractOptions, ExtractSummary
from c3dnet.features.output import OutputDir
from c3dnet.features.ray_stages import CHUNK_BYTES, ClipActor, ModelSpec, decode_video
from c3dnet.features.writers import VideoJob, WriterPool, count_written
from c3dnet.fileio import OutputError
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import get_logger, progress_bar

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

log = get_logger(__name__)

INSTALL = "pip install 'c3dnet[ray]'"
DECODER_MEMORY = 512 * 2**20
"""Memory a decode task reserves: a chunk of decoded frames, the clips of one chunk and the decoder's own."""
SHARED_STORAGE = ("the output folder, the weights and the videos must be on a file system that every node mounts at "
                  "the same path (NFS, Lustre, a cloud file share): mount it there, or leave that node out of the "
                  "cluster")

__all__ = ["ModelSpec", "RayOptions", "RayPlan", "check_storage", "extract_ray", "plan_resources"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide an extraction runs on Ray.

    Attributes:
        address: "auto" (the cluster this machine is part of, from `ray start` or RAY_ADDRESS; a Ray of this
            machine alone when there is none), "local" (a Ray of this machine alone) or a cluster's address.
        gpus_per_actor: GPUs of each model actor; None: 1 when the cluster has GPUs, 0 (CPU actors) otherwise.
        actors: model actors (at most; the pool shrinks while nodes are lost); None: from the resources.
        decoders: decode tasks at a time; None: from the resources.
        cpus_per_actor: CPUs each actor reserves (and its intra-op threads, rounded up); None: see `plan_resources`.
    """

    address: str = "auto"
    gpus_per_actor: float | None = None
    actors: int | None = None
    decoders: int | None = None
    cpus_per_actor: float | None = None


@dataclass(frozen=True)
class RayPlan:
    """What a job asks of the cluster: `actors` model actors of `actor_cpus` CPUs and `actor_gpus` GPUs each
    (`threads` intra-op threads on the CPU), and `decoders` decode tasks of `decoder_cpus` CPUs each."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    decoders: int
    decoder_cpus: float

    def describe(self) -> str:
        device = f"{self.actor_gpus:g} GPU + {self.actor_cpus:g} CPU" if self.actor_gpus else f"{self.actor_cpus:g} CPU"
        return (f"{self.actors} model actor(s) of {device} each, {self.decoders} decode task(s) of "
                f"{self.decoder_cpus:g} CPU each")


def plan_resources(nodes: list[dict[str, float]], options: RayOptions) -> RayPlan:
    """The actors and decoders for the alive nodes' resources (each a dict as `ray.nodes()` gives, "CPU", "GPU").

    With GPUs, one actor per `gpus_per_actor` GPUs (1 CPU each, which drives its GPU), and a decode task on every
    CPU left. On CPUs alone, the model needs the cores: one actor per node, taking all of the smallest node's CPUs
    but half of one, and one decode task of half a CPU per node (decoding costs a few percent of the model's time
    there). `options` overrides any of these.
    """
    cpu_nodes = [n.get("CPU", 0.0) for n in nodes if n.get("CPU", 0.0) > 0]
    cpus, gpus = sum(cpu_nodes), sum(n.get("GPU", 0.0) for n in nodes)
    if not cpu_nodes:
        raise ConfigError("the Ray cluster has no node with CPUs: decoding needs them (ray start --num-cpus N)")
    per_gpu = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
    if per_gpu > 0:
        if gpus < per_gpu:
            raise ConfigError(f"--ray-gpus-per-actor {per_gpu:g}: the Ray cluster has {gpus:g} GPUs; give 0 to run "
                              "the model on CPUs")
        actors = options.actors or max(1, int(gpus // per_gpu))
        actor_cpus = options.cpus_per_actor or 1.0
        decoders = options.decoders or max(1, int(cpus - actors * actor_cpus))
        decoder_cpus = 1.0
    else:
        actors = options.actors or len(cpu_nodes)
        actor_cpus = options.cpus_per_actor or max(0.5, min(cpu_nodes) - 0.5)
        decoders = options.decoders or len(cpu_nodes)
        decoder_cpus = 0.5
    return RayPlan(actors, actor_cpus, per_gpu, max(1, math.ceil(actor_cpus)), decoders, decoder_cpus)


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(f"c3d extract --ray needs Ray Data: {INSTALL} (or pip install 'ray[data]')") from e
    return ray


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray, connected to the cluster `address` names (see `RayOptions.address`); disconnected afterwards if this
    call connected it. A Ray this process already joined is used as it is."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        ray.init(include_dashboard=False)
    else:
        try:
            ray.init(address=address)
        except ConnectionError as e:
            if address != "auto":
                raise ConfigError(f"--ray {address}: no Ray cluster answers there ({e}); start its head with "
                                  "`ray start --head`, and give the address it prints") from e
            log.info("no Ray cluster is running here: starting Ray on this machine alone")
            ray.init(include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def check_storage(ray: Any, out: OutputDir, paths: list[str]) -> None:
    """Before any work: every alive node must see the output folder as this process wrote it, be able to write
    there, and see `paths` (the weights, a video). `DataError` naming the node and what it cannot see."""
    from ray import cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name, token = f".ray-check-{uuid.uuid4().hex}", uuid.uuid4().hex
    (out.path / name).write_text(token, encoding="utf-8")
    cloudpickle.register_pickle_by_value(ray_probe)  # the probe's code travels with it: no c3dnet import there
    probe = ray.remote(ray_probe.probe_storage)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        calls = [(n, probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], False))
                  .remote(str(out.path.absolute()), name, token, paths)) for n in nodes]
        for node, call in calls:
            where = f"node {node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})"
            problem = ray.get(call, timeout=120)["problem"]
            if problem:
                raise DataError(f"c3d extract --ray: {where} {problem}; {SHARED_STORAGE}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            (out.path / name).unlink()


def extract_ray(records: list[VideoRecord], spec: ModelSpec, out_dir: str | os.PathLike[str],
                options: ExtractOptions | None = None, ray_options: RayOptions | None = None,
                keys: list[str] | None = None, progress: bool = True) -> ExtractSummary:
    """`features.extract`'s outputs, computed on a Ray cluster; finished videos are skipped, so a rerun resumes.

    `options.batch_size` 0 means a plain run's default on the actors' device (64 on GPUs, 32 on CPUs), which gives
    the rows of a plain run bit for bit; `options.workers` is not used (`ray_options.decoders` is).

    Raises:
        DataError: a node cannot see the output folder (before any work), or an unreadable video without
            `options.skip_bad`.
        OutputError: the output folder cannot take the features (see `features.extract`).
    """
    from c3dnet.inference.backends import load_backend

    options = options or ExtractOptions()
    ray_options = ray_options or RayOptions()
    out = OutputDir(out_dir).create()
    keys = keys or output_keys(records)
    # The driver's copy of the model gives what the manifest records (its width, preprocessing, source).
    runner = ClipRunner(load_backend(spec.weights, "cpu", spec.precision, progress=progress), spec.layer)
    options.recipe.check_model(runner.dim, runner.preprocess)
    summary = ExtractSummary()
    todo = []
    for record, key in zip(records, keys):
        if out.is_done(key):
            out.check_same_settings(key, options.settings(runner))
            summary.skipped += 1
        else:
            todo.append((record, key))
    if summary.skipped:
        log.info("%d of %d videos already extracted in %s: skipped", summary.skipped, len(records), out.path)
    if not todo:  # nothing for the cluster to do (no connection needed): merge what the folder holds
        out.clear_stale_locks()
        out.merge_manifest()
        return summary
    if isinstance(spec.weights, (str, os.PathLike)) and os.path.exists(spec.weights):
        spec = dataclasses.replace(spec, weights=os.path.abspath(spec.weights))  # as every node must see it
    with connected(ray_options.address) as ray:
        paths = [spec.weights] if isinstance(spec.weights, str) and os.path.exists(spec.weights) else []
        check_storage(ray, out, paths + [os.path.abspath(r.path) for r, _ in todo[:1]])
        plan = plan_resources([n["Resources"] for n in ray.nodes() if n.get("Alive")], ray_options)
        log.info("ray: %s", plan.describe())
        if not options.batch_size:
            options = dataclasses.replace(options, batch_size=64 if plan.actor_gpus else 32)
        run = _RayWrites(todo, out, runner, options, summary, progress, len(records))
        finished = False
        try:
            for batch in _rows(ray, todo, spec, runner, options, plan):
                run.add(batch)
            run.finish()
            finished = True
        finally:
            run.close()
            out.end_run(finished)
    return summary


def _rows(ray: Any, todo: list[tuple[VideoRecord, str]], spec: ModelSpec, runner: ClipRunner,
          options: ExtractOptions, plan: RayPlan) -> Iterator[dict[str, np.ndarray]]:
    """The pipeline's output batches (index, view, meta, error, row), as the cluster computes them."""
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    context = DataContext.get_current()
    saved = context.target_max_block_size, context.enable_progress_bars
    context.target_max_block_size = CHUNK_BYTES  # each chunk of clips its own block: bounded objects
    context.enable_progress_bars = False  # the driver's own bar counts videos
    group = options.recipe.num_crops
    batch_size = max(group, options.batch_size // group * group)  # the Batcher's: the same kernels, the same bits
    device = "cuda" if plan.actor_gpus > 0 else "cpu"
    try:
        # Absolute: a worker's current folder is not the driver's (the error texts then name absolute paths)
        items = [{"index": i, "path": os.path.abspath(record.path)} for i, (record, _) in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # a task per video
        # The memory request also keeps Ray Data from fusing the decode tasks into the model's actors (it does
        # when both ask for the same resources): decoding stays on tasks of its own, as many as the plan says.
        ds = ds.map_batches(decode_video, batch_size=1, batch_format="numpy", num_cpus=plan.decoder_cpus,
                            memory=DECODER_MEMORY, compute=TaskPoolStrategy(size=plan.decoders),
                            fn_kwargs={"preprocess": runner.preprocess, "options": options})
        ds = ds.map_batches(ClipActor, batch_size=batch_size, batch_format="numpy", num_cpus=plan.actor_cpus,
                            num_gpus=plan.actor_gpus or None,
                            compute=ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors),
                            fn_constructor_kwargs={"spec": spec, "batch_size": batch_size, "device": device,
                                                   "threads": plan.threads})
        yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    finally:
        context.target_max_block_size, context.enable_progress_bars = saved


class _RayWrites:
    """The driver's side of a Ray extraction: the videos in progress, their rows as they come, the writers.

    Rows come in any order and, after a retry, twice: a video starts (locked, its `VideoJob` opened) with the row
    that carries its `VideoMeta` (earlier rows wait for it), and a view number already in is dropped.
    """

    def __init__(self, todo: list[tuple[VideoRecord, str]], out: OutputDir, runner: ClipRunner,
                 options: ExtractOptions, summary: ExtractSummary, progress: bool, total: int) -> None:
        self.todo, self.out, self.runner, self.options, self.summary = todo, out, runner, options, summary
        self.leftovers = out.leftovers({key for _, key in todo})
        self.jobs: dict[int, VideoJob] = {}  # started, not yet written
        self.waiting: dict[int, list[tuple[int, np.ndarray]]] = {}  # rows that came before their video's meta
        self.seen: dict[int, set[int]] = {}  # view numbers in, per started video
        self.closed: set[int] = set()  # written, failed, skipped or busy: later rows are dropped
        self.writers = WriterPool(runner, options)
        self.bar = progress_bar(total, "extract", "video", summary.skipped, progress)
        self.start = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for i, view, meta, error, row in zip(batch["index"].tolist(), batch["view"].tolist(), batch["meta"],
                                             batch["error"], batch["row"]):
            if i in self.closed:
                continue
            if error:
                self._fail(i, str(error))
                continue
            if meta and i not in self.jobs:
                self._start(i, pickle.loads(meta))  # the driver's own workers' record (Ray pickles all of it)
                if i in self.closed:
                    continue
            if i in self.jobs:
                self._add(i, view, row)
            else:
                self.waiting.setdefault(i, []).append((view, np.array(row)))
        self._collect()

    def _start(self, i: int, meta: Any) -> None:
        record, key = self.todo[i]
        lock = self.out.lock(key)
        if self.out.is_done(key) or not self._acquire(lock):  # done, or being done, by another process meanwhile
            self._close(i, busy=not self.out.is_done(key))
            return
        self.out.remove(self.leftovers.get(key, []))  # temporaries of a process that died on it (a killed driver)
        if self.out.is_done(key):
            lock.release()
            self._close(i)
            return
        job = self.jobs[i] = VideoJob(record, key, self.out, lock, i)
        self.seen[i] = set()
        job.open(meta, self.runner.dim, self.options)
        for view, row in self.waiting.pop(i, []):
            self._add(i, view, row)

    def _acquire(self, lock: Any) -> bool:
        try:
            return lock.acquire()
        except C3DError as e:  # the folder, not the video (a full disk)
            raise OutputError(str(e)) from e

    def _add(self, i: int, view: int, row: np.ndarray) -> None:
        if view in self.seen[i]:
            return  # sent again by a retried task
        self.seen[i].add(view)
        crops = self.options.recipe.num_crops
        self.summary.clips += int(view % crops == crops - 1)  # a clip is counted once, at its last crop's row
        job = self.jobs[i]
        if job.add(view, row):
            self.writers.submit(job)
            self.closed.add(i)
            del self.seen[i]

    def _close(self, i: int, busy: bool = False) -> None:
        self.closed.add(i)
        self.waiting.pop(i, None)
        if busy:
            self.summary.busy += 1
        else:
            self.summary.skipped += 1
        self.bar.update(1)

    def _collect(self, wait: bool = False) -> None:
        count_written(self.writers.collect(wait), self.jobs, self.summary, self.bar, self.start)

    def _fail(self, i: int, error: str) -> None:
        self.closed.add(i)
        self.waiting.pop(i, None)
        self.seen.pop(i, None)
        job = self.jobs.pop(i, None)
        if job is not None:
            job.discard()
        self.bar.update(1)
        record, key = self.todo[i]
        if not self.options.skip_bad:
            raise DataError(error)
        log.warning("skipped: %s", error)
        self.summary.failed.append((str(record.path), error))
        self.out.write_failed(key, str(record.real_path), error)

    def finish(self) -> None:
        """Wait for every write; a video whose rows did not all come back is an error naming it."""
        self._collect(wait=True)
        lost = [self.todo[i][1] for i in range(len(self.todo)) if i not in self.closed]
        if lost:
            raise DataError(f"{len(lost)} videos did not come back whole from the Ray cluster ({', '.join(lost[:5])}"
                            f"{', ...' if len(lost) > 5 else ''}): rerun the same command to extract them")

    def close(self) -> None:
        """After the run or an error: stop the writers, drop the rows of unfinished videos, release their locks."""
        self.writers.close()
        for job in self.jobs.values():
            job.discard()
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
