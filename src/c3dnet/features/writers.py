"""A video's rows as they arrive (`VideoJob`), and the threads that write finished videos (`WriterPool`).

Writing a finished video (its rows, its manifest part and the fsyncs that make them durable) happens on writer
threads: on a disk whose fsync takes milliseconds, doing it in the extracting thread would stall the model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from c3dnet.engine.runner import ClipRunner
from c3dnet.features.decoders import VideoMeta
from c3dnet.features.locks import VideoLock
from c3dnet.features.manifest import TMP_TAG, ManifestEntry, format_times
from c3dnet.features.options import ExtractOptions
from c3dnet.features.output import OutputDir
from c3dnet.features.pooling import mean_row, pool_groups, prepare_clip_row, row_groups
from c3dnet.fileio import atomic_write, atomic_write_text, publish
from c3dnet.metrics import l2_normalize

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

WRITERS = 8  # threads writing finished videos: their fsyncs overlap


class VideoJob:
    """One video being extracted: its lock, its clips and a row sink (a running sum with `video_mean`, else a
    memory-mapped temporary .npy, so long videos' rows live on disk)."""

    def __init__(self, record: VideoRecord, key: str, out: OutputDir, lock: VideoLock, index: int) -> None:
        self.record, self.key, self.out, self.lock, self.index = record, key, out, lock, index
        self.meta: VideoMeta | None = None
        self.received = 0
        self.rows: np.ndarray | None = None
        self.tmp: Path | None = None

    @property
    def num_clips(self) -> int:
        return len(self.meta.starts) if self.meta is not None else 0

    def open(self, meta: VideoMeta, dim: int, video_mean: bool) -> None:
        """Ready the row sink: a running sum with `video_mean`, else a memory-mapped (num_clips, dim) file (the
        segments are pooled from it once every clip is in)."""
        self.meta = meta
        if video_mean:
            self.rows = np.zeros((1, dim), dtype=np.float64)  # running sum
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.{TMP_TAG}{os.getpid()}-", suffix=".npy.tmp",
                                   dir=self.out.path)
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.num_clips, dim))

    def add(self, k: int, row: np.ndarray, video_mean: bool, l2: str = "none") -> bool:
        """Row of clip `k` (normalised first with l2="clip"); True when it was the video's last."""
        row = prepare_clip_row(row, l2)
        if video_mean:
            self.rows[0] += row
        else:
            self.rows[k] = row
        self.received += 1
        return self.received == self.num_clips

    def drop_rows(self) -> None:
        """Close and remove the memory-mapped clip rows (once pooled into the output)."""
        del self.rows
        self.rows = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None

    def discard(self) -> None:
        """Drop the partial rows and release the lock (an unreadable video, an error or an interrupt)."""
        self.rows = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
        self.lock.release()


def write_outputs(job: VideoJob, runner: ClipRunner, options: ExtractOptions) -> None:
    """Write the video's .npy (rename into place), then its manifest part, then release its lock."""
    out = job.out.npy(job.key)
    assert job.rows is not None and job.meta is not None
    groups = row_groups(job.num_clips, options.segments, options.segment_rule, options.video_mean)
    if options.video_mean:
        feats = mean_row(job.rows[0], job.received, options.l2)  # (dim,) from the running sum
        with atomic_write(out, "wb") as f:
            np.save(f, feats)
    elif options.segments:
        feats = pool_groups(job.rows, groups, options.l2)  # (segments, dim)
        with atomic_write(out, "wb") as f:
            np.save(f, feats)
        job.drop_rows()
    else:
        if options.l2 == "output":
            for lo in range(0, len(job.rows), 4096):  # in blocks: the rows live on disk
                job.rows[lo:lo + 4096] = l2_normalize(job.rows[lo:lo + 4096])  # cast back to float32
        job.rows.flush()
        del job.rows
        job.rows = None
        publish(job.tmp, out)
        job.tmp = None
    m = job.meta
    times = job.out.times(job.key)
    atomic_write_text(times, format_times(m.plan.spans(groups)))
    job.out.write_part(ManifestEntry(
        key=job.key, output=out.name, video=str(job.record.real_path), layer=runner.output,
        num_frames=m.num_frames, fps=m.fps, clip_starts=[int(s) for s in m.starts],
        clip_len=runner.preprocess.clip_len, frame_interval=runner.preprocess.frame_interval, stride=options.stride,
        video_mean=options.video_mean, l2=options.l2, dim=runner.dim, weights=options.weights,
        orientation=m.orientation, segments=options.segments,
        segment_rule=options.segment_rule if options.segments else "",
        sample_fps=str(options.fps) if options.fps is not None else "", num_sampled_frames=m.plan.num_sampled,
        times=times.name,
    ))
    job.lock.release()


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
