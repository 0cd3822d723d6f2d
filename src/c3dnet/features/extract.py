"""`extract`: decoder processes feed clips of several videos into fixed-size batches; resumable, concurrent-safe."""

from __future__ import annotations

import contextlib
import inspect
import json
import mmap
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.engine.runner import ClipRunner, PendingRows
from c3dnet.errors import DataError
from c3dnet.features.clips import clip_frames, clip_starts
from c3dnet.features.locks import VideoLock, _clear_stale_locks, _release_own_locks
from c3dnet.features.manifest import (
    LOCKS_DIR,
    PARTS_DIR,
    TMP_TAG,
    ManifestEntry,
    _is_done,
    _parse_entry,
    output_keys,
    write_merged_manifest,
)
from c3dnet.fileio import atomic_write, atomic_write_text, publish
from c3dnet.log import get_logger
from c3dnet.metrics import l2_normalize

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord
    from c3dnet.preprocess import Preprocess

log = get_logger(__name__)


# --------------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class ExtractOptions:
    """What `extract` computes and how.

    Attributes:
        stride: frames between consecutive clip starts (16: non-overlapping clips, as the paper).
        video_mean: store the mean over clips (dim,) instead of every clip's row (num_clips, dim).
        l2: L2-normalise each row, or the video mean after averaging (the paper: mean, then L2).
        batch_size: clips per forward pass; batches mix clips of several videos.
        workers: decoder processes (each decodes one video at a time); 1 suits the CPU, where the model needs
            every core, one per spare core a GPU.
        skip_bad: record unreadable videos in failed.txt and go on, instead of stopping with a `DataError`.
        chunk: frames per decoded chunk.
        weights: the weights' path, recorded in the manifest.
        autorotate: turn frames as each video's display matrix says (FFmpeg's default); False keeps the coded
            orientation. The manifest records what was applied.
    """

    stride: int = 16
    video_mean: bool = False
    l2: bool = False
    batch_size: int = 32
    workers: int = 1
    skip_bad: bool = False
    chunk: int = 64
    weights: str = ""
    autorotate: bool = True


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0  # already complete
    busy: int = 0  # locked by another live process
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    clips: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Job:
    """One video being extracted: its lock, clip starts and a row sink (memory-mapped temporary .npy)."""

    def __init__(self, record: VideoRecord, key: str, out_dir: Path, lock: VideoLock, index: int) -> None:
        self.record, self.key, self.out_dir, self.lock, self.index = record, key, out_dir, lock, index
        self.starts = np.zeros(0, dtype=np.int64)
        self.num_frames, self.fps, self.orientation = 0, 0.0, "none"
        self.received = 0
        self.rows: np.ndarray | None = None
        self.tmp: Path | None = None

    def open_sink(self, dim: int, video_mean: bool) -> None:
        if video_mean:
            self.rows = np.zeros((1, dim), dtype=np.float64)  # running sum
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.{TMP_TAG}{os.getpid()}-", suffix=".npy.tmp", dir=self.out_dir)
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(self.starts), dim))

    def discard(self) -> None:
        self.rows = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
        self.lock.release()


def _finish(job: _Job, runner: ClipRunner, options: ExtractOptions) -> None:
    """Write the video's .npy (rename into place), then its manifest part, then release its lock."""
    out = job.out_dir / f"{job.key}.npy"
    assert job.rows is not None
    if options.video_mean:
        feats = (job.rows[0] / max(job.received, 1)).astype(np.float32)  # (dim,)
        if options.l2:
            feats = l2_normalize(feats).astype(np.float32)
        with atomic_write(out, "wb") as f:
            np.save(f, feats)
    else:
        if options.l2:
            for lo in range(0, len(job.rows), 4096):  # in blocks: the rows live on disk
                job.rows[lo:lo + 4096] = l2_normalize(job.rows[lo:lo + 4096])  # cast back to float32
        job.rows.flush()
        del job.rows
        job.rows = None
        publish(job.tmp, out)
        job.tmp = None
    entry = ManifestEntry(
        key=job.key, output=out.name, video=str(job.record.path.resolve()), layer=runner.output,
        num_frames=job.num_frames, fps=job.fps, clip_starts=[int(s) for s in job.starts],
        clip_len=runner.preprocess.clip_len, frame_interval=runner.preprocess.frame_interval, stride=options.stride,
        video_mean=options.video_mean, l2=options.l2, dim=runner.dim, weights=options.weights,
        orientation=job.orientation,
    )
    atomic_write_text(job.out_dir / PARTS_DIR / f"{job.key}.json", json.dumps(entry.to_dict()) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (job.out_dir / PARTS_DIR / f"{job.key}.failed").unlink()
    job.lock.release()


_CLIPS_PER_ITEM = 16  # clips per message from a decoder process: bounded memory, few messages
_RING_SLOTS = 4 * _CLIPS_PER_ITEM  # clip slots per decoder process in the shared rings
_WRITERS = 8  # threads writing finished videos: their fsyncs overlap


class _Stopped(Exception):
    """The extraction ended (an error, an interrupt, or its process died) while a decoder process waited."""


class _Rings:
    """A ring of clip slots (T, crop, crop, 3) per decoder process, in memory shared with this process.

    One anonymous shared mapping made before the fork: nothing goes through /dev/shm, and no memory is mapped
    per message (a fresh shared-memory tensor per message costs this process page faults on every page it
    reads: about 0.4 ms a clip against 0.06 ms for a copy from memory already mapped). A decoder process takes
    its slots in order, waiting on its semaphore when all are in use; messages then carry only slot numbers,
    and this process frees the slots, in the same order, once it has copied the clips out.
    """

    def __init__(self, context: Any, workers: int, clip_shape: tuple[int, ...]) -> None:
        self.slots = _RING_SLOTS
        size = workers * self.slots * int(np.prod(clip_shape))
        self._map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS, inherited by the forked processes
        self.array = np.frombuffer(self._map, dtype=np.uint8).reshape(workers, self.slots, *clip_shape)
        self.free = [context.Semaphore(self.slots) for _ in range(workers)]
        self.stop = context.Event()
        self.owner_pid = os.getpid()
        self.next = 0  # in a decoder process: its next slot

    def take(self, worker: int) -> int:
        """In decoder process `worker`: its next slot, once free; `_Stopped` if the extraction ended."""
        while not self.free[worker].acquire(timeout=0.5):
            if self.stop.is_set() or os.getppid() != self.owner_pid:
                raise _Stopped
        slot, self.next = self.next, (self.next + 1) % self.slots
        return slot

    def close(self) -> None:
        del self.array
        with contextlib.suppress(BufferError):  # a view still held (by a traceback, say): freed when collected
            self._map.close()


class _Decoder(torch.utils.data.IterableDataset):
    """Runs in each decoder process: takes the next video to do, locks it, and streams its clips as messages.

    Messages: ("skip"|"busy", i, None, None), ("start", i, meta, None), ("clips", i, first clip number, clips),
    ("fail", i, message, None). `clips` is (worker, first slot, count) in the shared rings when there are
    rings (a fork), else a uint8 tensor (n, T, crop, crop, 3). Videos are handed out through a shared counter,
    so a process that finishes early takes the next one; locks are taken for the writing process (`owner_pid`).
    """

    def __init__(self, todo: list[tuple[VideoRecord, str]], out_dir: Path, runner: ClipRunner,
                 options: ExtractOptions, counter: Any, rings: _Rings | None) -> None:
        self.todo, self.out_dir, self.options, self.counter, self.rings = todo, out_dir, options, counter, rings
        self.leftovers = _leftovers(out_dir, {key for _, key in todo})
        self.preprocess = runner.preprocess
        self.owner_pid = os.getpid()

    def _indices(self, info) -> Iterator[int]:
        if self.counter is None:  # no shared counter (no fork): worker k takes videos k, k + n, ...
            n, k = (info.num_workers, info.id) if info is not None else (1, 0)
            yield from range(k, len(self.todo), n)
            return
        while True:
            with self.counter.get_lock():
                i = self.counter.value
                self.counter.value += 1
            if i >= len(self.todo):
                return
            yield i

    def __iter__(self) -> Iterator[tuple[str, int, Any, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            from c3dnet.data.decode import set_decode_threads

            torch.set_num_threads(1)
            set_decode_threads(1)  # the processes already share the cores out
        worker = info.id if info is not None else 0
        with contextlib.suppress(_Stopped):
            for i in self._indices(info):
                yield from self._video(i, worker)

    def _video(self, i: int, worker: int) -> Iterator[tuple[str, int, Any, Any]]:
        record, key = self.todo[i]
        if _is_done(self.out_dir, key):
            yield ("skip", i, None, None)
            return
        lock = VideoLock(self.out_dir / LOCKS_DIR / f"{key}.lock", owner_pid=self.owner_pid)
        if not lock.acquire():
            yield ("busy", i, None, None)
            return
        _remove_leftovers(self.out_dir, self.leftovers.get(key, []))
        if _is_done(self.out_dir, key):  # finished by another process between our check and our lock
            lock.release()
            yield ("skip", i, None, None)
            return
        rings = self.rings
        first, slot0, clips = 0, 0, []  # the message being filled: its first clip and slot, unshared clips
        count = 0

        def message() -> tuple[str, int, int, Any]:
            return ("clips", i, first, (worker, slot0, count) if rings is not None else _tensor(clips))

        try:
            meta = _video_meta(record, self.preprocess, self.options)
            yield ("start", i, meta, None)
            for k, frames in clip_frames(record.path, self.preprocess, self.options.stride, meta["num_frames"],
                                         meta["size_hw"], self.options.chunk, self.options.autorotate):
                if rings is not None:
                    slot = rings.take(worker)
                    if count == 0:
                        slot0 = slot
                    np.stack(frames, out=rings.array[worker, slot])  # the clip's one copy
                else:
                    clips.append(np.stack(frames))
                count += 1
                # A message's slots are consecutive: it ends at the ring's end as well.
                if count == _CLIPS_PER_ITEM or (rings is not None and slot == rings.slots - 1):
                    yield message()
                    first, count, clips = k + 1, 0, []
            if count:
                yield message()
        except DataError as e:
            if count:  # slots taken must reach the other side to be freed; the rows are then dropped there
                yield message()
            yield ("fail", i, str(e), None)


def _tensor(clips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(clips))  # (n, T, crop, crop, 3)


def extract(records: list[VideoRecord], runner: ClipRunner, out_dir: str | os.PathLike[str],
            options: ExtractOptions | None = None, keys: list[str] | None = None,
            progress: bool = True) -> ExtractSummary:
    """Extract one feature array per video into `out_dir`; finished videos are skipped, so a rerun resumes.

    `options.workers` decoder processes decode whole videos in parallel; this process fills fixed-size batches
    with their clips, mixing videos, runs the model and writes each video's outputs when its last row is in.

    Raises:
        DataError: an unreadable video (unless `options.skip_bad`); finished videos stay finished.
    """
    options = options or ExtractOptions()
    out_dir = Path(out_dir)
    (out_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    keys = keys or output_keys(records)
    summary = ExtractSummary()
    todo = []
    wanted = _settings(runner, options)
    for record, key in zip(records, keys):
        if _is_done(out_dir, key):
            _check_same_settings(out_dir, key, wanted)
            summary.skipped += 1
        else:
            todo.append((record, key))
    if summary.skipped:
        log.info("%d of %d videos already extracted in %s: skipped", summary.skipped, len(records), out_dir)

    import multiprocessing

    workers = max(1, min(options.workers, len(todo)))
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else None)
    counter = context.Value("q", 0) if fork else None  # inherited by the forked decoder processes
    pre = runner.preprocess
    clip_shape = (runner.clip_len, pre.crop_size, pre.crop_size, 3)  # channels last: as decoded, no transpose
    rings = _Rings(context, workers, clip_shape) if fork and todo else None
    # Messages as they come, not round-robin over the processes (PyTorch >= 2.6; older ones keep the order).
    as_ready = {"in_order": False} if "in_order" in inspect.signature(torch.utils.data.DataLoader).parameters else {}
    loader = torch.utils.data.DataLoader(
        _Decoder(todo, out_dir, runner, options, counter, rings), batch_size=None, num_workers=workers,
        multiprocessing_context=context, prefetch_factor=4, **as_ready)
    # On a GPU two batch buffers, pinned: the model runs on one while the next is filled (`ClipRunner.submit`).
    depth = 2 if runner.asynchronous else 1
    pinned = runner.asynchronous and runner.device.type == "cuda"  # (a test's queued runner runs on the CPU)
    buffers = [torch.empty((options.batch_size, *clip_shape), dtype=torch.uint8, pin_memory=pinned)
               for _ in range(depth)]
    # Clips are copied with numpy, on this thread alone: a torch copy this large would wake every intra-op
    # thread, whose spinning takes cores from the decoder processes (measured: twice the CPU time).
    staging = [b.numpy() for b in buffers]
    filling = 0  # the buffer being filled; `batch` lists (job, clip number) of its filled rows
    batch: list[tuple[_Job | None, int]] = []
    in_flight: deque[tuple[PendingRows, list[tuple[_Job | None, int]]]] = deque()
    jobs: dict[int, _Job] = {}  # started and not yet written (or failed)
    # Writing a finished video (its rows, manifest part and the fsyncs that make them durable) happens on
    # writer threads: on a disk whose fsync takes milliseconds, doing it here would stall the model.
    writer = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="c3d-write")
    writing: dict[Future, _Job] = {}
    bar = _progress_bar(len(records), summary.skipped, progress)
    start = time.perf_counter()

    def run_batch() -> None:
        # Always the same batch shape (padded with copies of the first clip): kernels, and so the last float bits,
        # do not change with the batch size, which makes a resumed extraction bit-identical; static shapes also
        # suit cuDNN autotuning. The batch is staged in pinned memory, so its copy to the GPU is one fast DMA;
        # (B, T, H, W, 3) viewed as (B, 3, T, H, W) is the model's channels_last_3d layout already.
        nonlocal filling
        staging[filling][len(batch):] = staging[filling][0]
        in_flight.append((runner.submit(buffers[filling].permute(0, 4, 1, 2, 3)), batch.copy()))
        batch.clear()
        filling = (filling + 1) % depth
        while len(in_flight) >= depth:  # the buffer filled next is free once its last batch is done
            finish_batch()

    def finish_batch() -> None:
        pending, entries = in_flight.popleft()
        rows = pending.result()  # (B, D)
        for (job, k), row in zip(entries, rows):
            if job is None:  # a video that failed after some of its clips were staged
                continue
            if options.video_mean:
                job.rows[0] += row
            else:
                job.rows[k] = row
            job.received += 1
            summary.clips += 1
            if job.received == len(job.starts):
                writing[writer.submit(_finish, job, runner, options)] = job
        collect()

    def collect(wait: bool = False) -> None:
        """Count the videos whose outputs are written; re-raise a writer's error (a full disk, say)."""
        if wait or len(writing) > 4 * _WRITERS:  # a slow disk: finished rows must not pile up without bound
            futures.wait(writing, return_when=futures.ALL_COMPLETED if wait else futures.FIRST_COMPLETED)
        for future in [f for f in writing if f.done()]:
            job = writing.pop(future)
            future.result()  # on error the job stays in `jobs`, and is cleaned up below
            del jobs[job.index]
            summary.done += 1
            summary.frames += job.num_frames
            bar.update(1)
            _postfix(bar, summary, start)

    def add_clips(job: _Job, first: int, clips: np.ndarray) -> None:
        j = 0
        while j < clips.shape[0]:  # as many rows at a time as the batch has room for
            n = min(clips.shape[0] - j, options.batch_size - len(batch))
            staging[filling][len(batch):len(batch) + n] = clips[j:j + n]
            batch.extend((job, first + j + m) for m in range(n))
            j += n
            if len(batch) == options.batch_size:
                run_batch()

    messages = iter(loader) if todo else iter(())
    try:
        for kind, i, payload, clips in messages:
            if kind == "skip":
                summary.skipped += 1
                bar.update(1)
            elif kind == "busy":
                summary.busy += 1
                bar.update(1)
            elif kind == "start":
                record, key = todo[i]
                job = jobs[i] = _Job(record, key, out_dir, _held_lock(out_dir, key), i)
                job.num_frames, job.fps, job.orientation = payload["num_frames"], payload["fps"], payload["orientation"]
                job.starts = np.asarray(payload["starts"], dtype=np.int64)
                job.open_sink(runner.dim, options.video_mean)
            elif kind == "clips":
                if not isinstance(clips, torch.Tensor):  # slots of a decoder process's ring: copy, then free
                    w, slot, n = clips  # (a list: the loader turns tuples into lists)
                    add_clips(jobs[i], payload, rings.array[w, slot:slot + n])
                    for _ in range(n):
                        rings.free[w].release()
                else:
                    add_clips(jobs[i], payload, clips.numpy())
            else:  # "fail"
                record, key = todo[i]
                job = jobs.pop(i, None) or _Job(record, key, out_dir, _held_lock(out_dir, key), i)
                _fail(job, DataError(payload), options, summary, [batch, *(entries for _, entries in in_flight)])
                bar.update(1)
        if batch:
            run_batch()
        while in_flight:
            finish_batch()
        collect(wait=True)
    finally:
        # Stop the decoder processes now, not whenever the iterator is collected: none may still take a lock
        # after ours are released below.
        if rings is not None:
            rings.stop.set()  # wakes any waiting for a ring slot
        del messages
        in_flight.clear()
        writer.shutdown(wait=True)  # no writer may still be using a job dropped below
        for job in jobs.values():  # unfinished (an error or an interrupt): drop their partial rows
            job.discard()  # (harmless for one whose writer finished after the error)
        _release_own_locks(out_dir)  # also those of videos a decoder process had locked but not yet started
        bar.close()
        summary.seconds = time.perf_counter() - start
        _clear_stale_locks(out_dir)
        write_merged_manifest(out_dir)
        if rings is not None:
            rings.close()
    return summary


def _held_lock(out_dir: Path, key: str) -> VideoLock:
    """This process's view of a lock that one of its decoder processes took for it."""
    lock = VideoLock(out_dir / LOCKS_DIR / f"{key}.lock")
    lock.held = True
    return lock


def _settings(runner: ClipRunner, options: ExtractOptions) -> dict[str, Any]:
    """What makes two extractions of a video give different arrays (all recorded in the manifest)."""
    pre = runner.preprocess
    return {"layer": runner.output, "dim": runner.dim, "clip_len": pre.clip_len, "frame_interval": pre.frame_interval,
            "stride": options.stride, "video_mean": options.video_mean, "l2": options.l2}


def _check_same_settings(out_dir: Path, key: str, wanted: dict[str, Any]) -> None:
    part = out_dir / PARTS_DIR / f"{key}.json"
    entry = _parse_entry(part.read_text(encoding="utf-8"), str(part)).to_dict()
    differ = {k: (entry[k], v) for k, v in wanted.items() if entry[k] != v}
    if differ:
        what = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise DataError(f"{part}: {out_dir} already holds features extracted with other settings ({what}); "
                        "use another --out folder, or the same settings to resume")


def _leftovers(out_dir: Path, keys: set[str]) -> dict[str, list[str]]:
    """Temporary files in `out_dir` of the videos `keys` (`.<key>.c3dpart-<pid>-*.npy.tmp`, `.<key>.npy.*.tmp`).

    Listed once for the whole run: a search per video would read the whole folder each time, which grows
    quadratically with the number of videos. Each is removed only by the process that then locks its video.
    """
    found: dict[str, list[str]] = {}
    with os.scandir(out_dir) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            candidates = []  # every key the name could start with; the longest is the most specific
            for marker in (f".{TMP_TAG}", ".npy."):
                cut = name.find(marker, 1)
                while cut > 1:
                    if name[1:cut] in keys:
                        candidates.append(name[1:cut])
                    cut = name.find(marker, cut + 1)
            if candidates:
                found.setdefault(max(candidates, key=len), []).append(name)
    return found


def _remove_leftovers(out_dir: Path, names: list[str]) -> None:
    """Temporary files of a process that died on this video (only the lock holder writes them)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def _video_meta(record: VideoRecord, preprocess: Preprocess, options: ExtractOptions) -> dict[str, Any]:
    from c3dnet.data.decode import video_info

    info = video_info(record.path, options.autorotate)
    return {"num_frames": info.num_frames, "fps": info.fps, "orientation": info.orientation,
            "size_hw": preprocess.resize_target(info.height, info.width),
            "starts": clip_starts(info.num_frames, preprocess, options.stride).tolist()}


def _fail(job: _Job, error: DataError, options: ExtractOptions, summary: ExtractSummary,
          staged: list[list[tuple[_Job | None, int]]]) -> None:
    # Its rows already staged (in the batch being filled or in one the model is running) stay there and are
    # computed, but go nowhere: the job is dropped.
    for entries in staged:
        for n, (other, _) in enumerate(entries):
            if other is job:
                entries[n] = (None, 0)
    job.discard()
    if not options.skip_bad:
        raise error
    log.warning("skipped: %s", error)
    summary.failed.append((str(job.record.path), str(error)))
    atomic_write_text(job.out_dir / PARTS_DIR / f"{job.key}.failed",
                      json.dumps({"video": str(job.record.path.resolve()), "error": str(error)}) + "\n")


def _progress_bar(total: int, initial: int, enabled: bool):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="video", desc="extract", dynamic_ncols=True,
                disable=not enabled)


def _postfix(bar, summary: ExtractSummary, start: float) -> None:
    elapsed = max(time.perf_counter() - start, 1e-9)
    bar.set_postfix_str(f"{summary.frames / elapsed:.0f} frames/s, {summary.clips / elapsed:.1f} clips/s")
