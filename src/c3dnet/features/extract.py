"""`extract`: decoder threads feed clips of several videos into fixed-size batches; resumable, concurrent-safe."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.errors import DataError
from c3dnet.features.clips import ClipRunner, clip_starts, stream_clips
from c3dnet.features.locks import VideoLock, _clear_stale_locks
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
from c3dnet.probe import l2_normalize

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

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
        workers: decoder threads (each decodes one video at a time); 1 suits the CPU, where the model needs
            every core, several a GPU.
        skip_bad: record unreadable videos in failed.txt and go on, instead of stopping with a `DataError`.
        chunk: frames per decoded chunk.
        weights: the weights' path, recorded in the manifest.
    """

    stride: int = 16
    video_mean: bool = False
    l2: bool = False
    batch_size: int = 32
    workers: int = 1
    skip_bad: bool = False
    chunk: int = 64
    weights: str = ""


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

    def __init__(self, record: VideoRecord, key: str, out_dir: Path, lock: VideoLock) -> None:
        self.record, self.key, self.out_dir, self.lock = record, key, out_dir, lock
        self.starts = np.zeros(0, dtype=np.int64)
        self.num_frames, self.fps = 0, 0.0
        self.size_hw: tuple[int, int] | None = None
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
    )
    atomic_write_text(job.out_dir / PARTS_DIR / f"{job.key}.json", json.dumps(entry.to_dict()) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (job.out_dir / PARTS_DIR / f"{job.key}.failed").unlink()
    job.lock.release()


_END = object()  # a decoder thread has no more videos


def extract(records: list[VideoRecord], runner: ClipRunner, out_dir: str | os.PathLike[str],
            options: ExtractOptions | None = None, keys: list[str] | None = None,
            progress: bool = True) -> ExtractSummary:
    """Extract one feature array per video into `out_dir`; finished videos are skipped, so a rerun resumes.

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

    clips_q: queue.Queue = queue.Queue(maxsize=max(2 * options.batch_size, 8))
    stop = threading.Event()
    pending = iter(todo)
    take = threading.Lock()
    held: list[_Job] = []
    held_guard = threading.Lock()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                clips_q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode_worker() -> None:
        while not stop.is_set():
            with take:
                record, key = next(pending, (None, None))
            if record is None:
                break
            if _is_done(out_dir, key):
                put(("skip", None, None))
                continue
            job = _Job(record, key, out_dir, VideoLock(out_dir / LOCKS_DIR / f"{key}.lock"))
            if not job.lock.acquire():
                put(("busy", None, None))
                continue
            with held_guard:
                held.append(job)
            _remove_leftovers(out_dir, key)
            try:
                if _is_done(out_dir, key):  # finished by another process between our check and our lock
                    job.lock.release()
                    put(("skip", None, None))
                    continue
                _start_job(job, runner, options)
                if not put(("start", job, None)):
                    return
                for k, clip in stream_clips(record.path, runner.preprocess, options.stride, job.num_frames,
                                            job.size_hw, options.chunk):
                    if not put(("clip", job, (k, clip))):
                        return
            except DataError as e:
                if not put(("fail", job, e)):
                    return
            except Exception as e:  # noqa: BLE001 - hand any decoder crash to the main thread, which re-raises
                put(("error", job, e))
                return
        put((_END, None, None))

    threads = [threading.Thread(target=decode_worker, daemon=True, name=f"c3d-decode-{i}")
               for i in range(max(1, min(options.workers, len(todo))))] if todo else []
    bar = _progress_bar(len(records), summary.skipped, progress)
    start = time.perf_counter()
    batch: list[tuple[_Job, int, torch.Tensor]] = []

    def run_batch() -> None:
        # Always the same batch shape (padded with copies of the first clip): kernels, and so the last float bits,
        # do not change with the batch size, which makes a resumed extraction bit-identical; static shapes also
        # suit cuDNN autotuning.
        parts = [clip.numpy() for _, _, clip in batch]
        parts += parts[:1] * (options.batch_size - len(batch))
        rows = runner(torch.from_numpy(np.stack(parts)))[: len(batch)]  # (B, 3, T, crop, crop) -> (B, D)
        for (job, k, _), row in zip(batch, rows):
            if options.video_mean:
                job.rows[0] += row
            else:
                job.rows[k] = row
            job.received += 1
            summary.clips += 1
            if job.received == len(job.starts):
                _finish(job, runner, options)
                summary.done += 1
                summary.frames += job.num_frames
                bar.update(1)
                _postfix(bar, summary, start)
        batch.clear()

    try:
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            kind, job, payload = clips_q.get()
            if kind is _END:
                running -= 1
            elif kind == "skip":
                summary.skipped += 1
                bar.update(1)
            elif kind == "busy":
                summary.busy += 1
                bar.update(1)
            elif kind == "start":
                job.open_sink(runner.dim, options.video_mean)
            elif kind == "clip":
                batch.append((job, *payload))
                if len(batch) == options.batch_size:
                    run_batch()
            elif kind == "fail":
                _fail(job, payload, options, summary, batch)
                bar.update(1)
            else:
                raise payload
        if batch:
            run_batch()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        with held_guard:
            for job in held:
                if job.lock.held:  # unfinished (an error or an interrupt): drop its partial rows
                    job.discard()
        bar.close()
        summary.seconds = time.perf_counter() - start
        _clear_stale_locks(out_dir)
        write_merged_manifest(out_dir)
    return summary


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


def _remove_leftovers(out_dir: Path, key: str) -> None:
    """Temporary files of a process that died on this video (only the lock holder writes them)."""
    for pattern in (f".{key}.{TMP_TAG}*.npy.tmp", f".{key}.npy.*.tmp"):
        for leftover in out_dir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _start_job(job: _Job, runner: ClipRunner, options: ExtractOptions) -> None:
    from c3dnet.data.decode import video_info

    info = video_info(job.record.path)
    job.num_frames, job.fps = info.num_frames, info.fps
    job.size_hw = runner.preprocess.resize_target(info.height, info.width)
    job.starts = clip_starts(info.num_frames, runner.preprocess, options.stride)


def _fail(job: _Job, error: DataError, options: ExtractOptions, summary: ExtractSummary,
          batch: list[tuple[_Job, int, torch.Tensor]]) -> None:
    batch[:] = [item for item in batch if item[0] is not job]
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
