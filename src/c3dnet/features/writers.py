"""A video's rows as they arrive (`VideoJob`), and the threads that write finished videos (`WriterPool`).

Writing a finished video (its rows, its manifest part and the fsyncs that make them durable) happens on writer
threads: on a disk whose fsync takes milliseconds, doing it in the extracting thread would stall the model.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from c3dnet.features.decoders import VideoMeta
from c3dnet.features.locks import HeartbeatLock
from c3dnet.features.manifest import TMP_TAG, ManifestEntry, format_times
from c3dnet.features.options import ExtractOptions, ExtractSummary
from c3dnet.features.output import REMEDY, OutputDir
from c3dnet.fileio import atomic_write, atomic_write_text, free_bytes, output_error, publish, reserve
from c3dnet.inference.pooling import mean_row, pool_groups, prepare_clip_row
from c3dnet.inference.runner import ClipRunner
from c3dnet.metrics import l2_normalize

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

WRITERS = 8  # threads writing finished videos: their fsyncs overlap
SIDECAR_BYTES = 4096 + 64  # a video's manifest part and times file, beyond 64 bytes per row (an estimate)


def npy_bytes(rows: int, dim: int) -> int:
    """The size of a float32 (rows, dim) .npy file: numpy's 128-byte header (shapes this small) and the data."""
    return 128 + rows * dim * 4


class RowFile:
    """A video's clip rows, float32 (num_clips, dim) or (num_clips, crops, dim), in a temporary .npy, each row (one
    crop's, with crops) written at its offset with `os.pwrite`. Its space is allocated when it is opened, so a full
    disk shows before the video is decoded, and any later write error is an `OSError` (a memory map turned it into
    a SIGBUS that killed the process without a word). Reading back goes through `os.pread` as well: `rows[g]` is
    the rows of clip numbers `g`, (len(g), ...) as the file's shape."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        header = io.BytesIO()
        shape = tuple(int(n) for n in shape)
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                      "fortran_order": False, "shape": shape})
        self.path, self.shape, self.offset = path, shape, len(header.getvalue())
        self.dim, self.per_clip = shape[-1], int(np.prod(shape[1:]))  # values of one row, of one clip
        self.fd = os.open(path, os.O_RDWR)
        try:
            reserve(self.fd, self.offset + int(np.prod(shape)) * 4, path.parent)
            self._write(header.getvalue(), 0)
        except BaseException:
            self.close()
            raise

    def write(self, k: int, row: np.ndarray) -> None:
        """Row `k` (dim,): clip k, or with crops view k (clip k // crops, crop k % crops), as numbered in
        `inference.clips`."""
        self._write(np.ascontiguousarray(row, dtype=np.float32).tobytes(), self.offset + k * self.dim * 4)

    def __getitem__(self, clips: np.ndarray) -> np.ndarray:
        """The rows of clip numbers `clips` (a range, as segments are), (len(clips), ...) float32."""
        lo, hi = int(clips.min()), int(clips.max()) + 1
        size = (hi - lo) * self.per_clip * 4
        data = bytearray()
        while len(data) < size:
            chunk = os.pread(self.fd, size - len(data), self.offset + lo * self.per_clip * 4 + len(data))
            if not chunk:
                raise OSError(f"{self.path}: shorter than its rows")
            data += chunk
        return np.frombuffer(bytes(data), dtype=np.float32).reshape(hi - lo, *self.shape[1:])[clips - lo]

    def _write(self, data: bytes, at: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, at)
            view, at = view[n:], at + n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VideoJob:
    """One video being extracted: its lock, its clips (each seen through the recipe's crops) and a row sink (a
    running sum with `video_mean`, else a `RowFile`, so long videos' rows live on disk)."""

    def __init__(self, record: VideoRecord, key: str, out: OutputDir, lock: HeartbeatLock, index: int) -> None:
        self.record, self.key, self.out, self.lock, self.index = record, key, out, lock, index
        self.meta: VideoMeta | None = None
        self.options = ExtractOptions()
        self.received = 0  # rows (views) in
        self.total: np.ndarray | None = None  # with video_mean: the float64 sum of the clip rows, (dim,) or (C, dim)
        self.rows: RowFile | None = None
        self.tmp: Path | None = None
        self.needed = 0  # bytes its outputs take

    @property
    def num_clips(self) -> int:
        return len(self.meta.starts) if self.meta is not None else 0

    @property
    def num_views(self) -> int:
        """Rows the model gives for this video: one per crop of each clip."""
        return self.num_clips * self.options.recipe.num_crops

    @property
    def direct(self) -> bool:
        """Whether the clip rows, as they are written, are the output (nothing pooled, moved or reduced)."""
        recipe = self.options.recipe
        moved = recipe.crops != "center" and recipe.crop_axis == "first"
        return not (recipe.video_mean or recipe.segments or moved or recipe.pca is not None)

    def open(self, meta: VideoMeta, dim: int, options: ExtractOptions) -> None:
        """Ready the row sink: a running sum with `video_mean`, else a `RowFile` of every clip row (the segments
        are pooled from it once every clip is in). The space the video needs is allocated or checked first:
        `OutputError` (naming the folder and the bytes) when the disk cannot take it."""
        self.meta, self.options = meta, options
        recipe = options.recipe
        crops = () if recipe.crops == "center" else (recipe.num_crops,)
        out_shape = recipe.shape(self.num_clips, dim)
        sidecars = SIDECAR_BYTES + 64 * recipe.rows(self.num_clips) + 8 * self.num_clips + 128 * len(meta.views)
        self.needed = npy_bytes(int(np.prod(out_shape[:-1])), out_shape[-1]) + sidecars
        if recipe.video_mean:
            self.total = np.zeros((*crops, dim), dtype=np.float64)  # running sum
            rest = self.needed
        else:
            clip_rows = npy_bytes(self.num_clips * recipe.num_crops, dim)
            if not self.direct:
                self.needed += clip_rows  # the clip rows, until they are pooled
            fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.{TMP_TAG}{os.getpid()}-", suffix=".npy.tmp",
                                       dir=self.out.path)
            os.close(fd)
            self.tmp = Path(tmp)
            try:
                self.rows = RowFile(self.tmp, (self.num_clips, *crops, dim))
            except OSError as e:
                self.drop_rows()
                raise output_error(e, self.out.path, f"the rows of {self.key}", self.needed, REMEDY) from e
            rest = self.needed - clip_rows
        if 0 <= free_bytes(self.out.path) < rest:
            self.drop_rows()
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise output_error(full, self.out.path, f"the features of {self.key}", self.needed, REMEDY)

    def add(self, k: int, row: np.ndarray) -> bool:
        """Row `k` (clip k, or with crops view k: `inference.clips` numbers them), normalised first with
        l2="clip"; with l2="output" and nothing pooled, each row is written normalised. True when it was the
        video's last."""
        recipe = self.options.recipe
        row = prepare_clip_row(row, recipe.l2)
        if self.total is not None:
            self.total.reshape(-1, self.total.shape[-1])[k % recipe.num_crops] += row  # its crop's sum
        else:
            if recipe.l2 == "output" and not recipe.segments:
                row = l2_normalize(row)  # written as float32
            try:
                self.rows.write(k, row)
            except OSError as e:
                raise output_error(e, self.out.path, f"the rows of {self.key}", self.needed, REMEDY) from e
        self.received += 1
        return self.received == self.num_views

    def drop_rows(self) -> None:
        """Close and remove the temporary clip rows (once pooled into the output, or given up)."""
        if self.rows is not None:
            self.rows.close()
            self.rows = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None

    def discard(self) -> None:
        """Drop the partial rows and release the lock (an unreadable video, an error or an interrupt)."""
        self.total = None
        self.drop_rows()
        self.lock.release()


def write_outputs(job: VideoJob, runner: ClipRunner, options: ExtractOptions) -> None:
    """Write the video's .npy (rename into place), then its times and manifest part, then release its lock.

    A write that fails (a full disk) removes what this call published, so no `.npy` without its part is left to
    look complete, and raises `OutputError` naming the folder and the bytes the video needs.
    """
    published: list[Path] = []
    try:
        _write_outputs(job, runner, options, published)
    except OSError as e:
        for path in published:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise output_error(e, job.out.path, f"the features of {job.key}", job.needed, REMEDY) from e
    job.lock.release()


def _pooled(job: VideoJob, groups: list[np.ndarray]) -> np.ndarray:
    """The video's rows as written, from its running sum or its clip rows: pooled, moved and reduced."""
    recipe = job.options.recipe
    if recipe.video_mean:  # (dim,) or (C, dim), from the running sum
        feats = mean_row(job.total, job.received // recipe.num_crops, recipe.l2)
    elif recipe.segments:
        feats = pool_groups(job.rows, groups, recipe.l2)  # (segments, [C,] dim)
    else:
        feats = job.rows[np.arange(job.num_clips)]  # (N, [C,] dim), each row already as written
    return recipe.layout(feats)


def _write_outputs(job: VideoJob, runner: ClipRunner, options: ExtractOptions, published: list[Path]) -> None:
    out = job.out.npy(job.key)
    assert job.meta is not None
    recipe = options.recipe
    groups = recipe.groups(job.num_clips)
    if job.direct:
        job.rows.close()
        publish(job.tmp, out)  # every row is in: renamed into place
        job.rows, job.tmp = None, None
        shape = recipe.shape(job.num_clips, runner.dim)
    else:
        feats = _pooled(job, groups)
        shape = feats.shape
        npy = io.BytesIO()
        np.save(npy, feats)  # in memory: numpy's own file writes report a full disk as a short write, no errno
        with atomic_write(out, "wb") as f:
            f.write(npy.getvalue())
        job.drop_rows()
    published.append(out)
    m = job.meta
    times = job.out.times(job.key)
    atomic_write_text(times, format_times(m.plan.spans(groups)))  # one row per clip (or segment): not per crop
    published.append(times)
    job.out.write_part(ManifestEntry(
        key=job.key, output=out.name, video=str(job.record.real_path), **options.settings(runner),
        num_frames=m.num_frames, fps=m.fps, clip_starts=[int(s) for s in m.starts], weights=options.weights,
        orientation=m.orientation, num_sampled_frames=m.plan.num_sampled, times=times.name,
        crop_boxes=[v.to_dict() for v in m.views], pca_file=recipe.pca.source if recipe.pca is not None else "",
        shape=list(shape),
    ))
    published.clear()  # done: the part marks it so


class WriterPool:
    """Threads writing finished videos; `collect` hands back those written and re-raises a writer's error."""

    def __init__(self, runner: ClipRunner, options: ExtractOptions, threads: int = WRITERS) -> None:
        self.runner, self.options, self.threads = runner, options, threads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="c3d-write")
        self.writing: dict[Future, VideoJob] = {}

    def submit(self, job: VideoJob) -> None:
        self.writing[self.pool.submit(write_outputs, job, self.runner, self.options)] = job

    def collect(self, wait: bool = False) -> list[VideoJob]:
        """The jobs written since the last call. With `wait`, all of them; without, a slow disk still makes it
        wait for one once more than 4 x threads videos are queued, so finished rows do not pile up."""
        if wait or len(self.writing) > 4 * self.threads:
            futures.wait(self.writing, return_when=futures.ALL_COMPLETED if wait else futures.FIRST_COMPLETED)
        written = []
        for future in [f for f in self.writing if f.done()]:
            job = self.writing.pop(future)
            future.result()  # a writer's error (a full disk, say) stops the extraction
            written.append(job)
        return written

    def close(self) -> None:
        """Wait for every writer (none may still use a job dropped afterwards)."""
        self.pool.shutdown(wait=True)


def count_written(written: list[VideoJob], jobs: dict[int, VideoJob], summary: ExtractSummary, bar: Any,
                  start: float) -> None:
    """The videos `WriterPool.collect` handed back: out of `jobs` (by index), counted in `summary`, a step of the
    progress `bar` each, whose rates run from `start` (a `time.perf_counter` time)."""
    for job in written:
        del jobs[job.index]
        summary.done += 1
        summary.frames += job.meta.num_frames
        bar.update(1)
    if written:
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{summary.frames / elapsed:.0f} frames/s, {summary.clips / elapsed:.1f} clips/s")
