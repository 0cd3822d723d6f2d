"""`extract`: decoder processes feed clips of many videos into fixed-size batches; resumable, concurrent-safe.

`options.workers` decoder processes (`features.decoders`) decode whole videos in parallel and send their clips;
this process stages them into batches that mix videos (`features.batcher`), runs the model, and hands each
finished video to writer threads (`features.writers`). The output folder (`features.output`) says what is done,
so a rerun resumes, and several processes may share it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from c3dnet.errors import DataError
from c3dnet.features.batcher import Batcher
from c3dnet.features.decoders import Busy, Clips, DecoderLoader, Failed, Skipped, Started
from c3dnet.features.manifest import output_keys
from c3dnet.features.options import ExtractOptions, ExtractSummary
from c3dnet.features.output import OutputDir
from c3dnet.features.writers import VideoJob, WriterPool, count_written
from c3dnet.fileio import OutputError
from c3dnet.inference.runner import ClipRunner
from c3dnet.log import get_logger, progress_bar

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord

log = get_logger(__name__)


def extract(records: list[VideoRecord], runner: ClipRunner, out_dir: str | os.PathLike[str],
            options: ExtractOptions | None = None, keys: list[str] | None = None,
            progress: bool = True) -> ExtractSummary:
    """Extract one feature array per video into `out_dir`; finished videos are skipped, so a rerun resumes.

    Raises:
        DataError: an unreadable video (unless `options.skip_bad`); finished videos stay finished.
        OutputError: the output folder cannot take the features (a full disk: the line names the folder and the
            bytes needed); the video being written leaves nothing behind, and a rerun resumes.
    """
    options = options or ExtractOptions()
    out = OutputDir(out_dir).create()
    keys = keys or output_keys(records)
    summary = ExtractSummary()
    todo = _plan(records, keys, out, options.settings(runner), summary)
    decoders = DecoderLoader(todo, out, runner, options)
    run = _Extraction(todo, out, runner, options, summary, decoders.clip_shape, progress, len(records))
    messages = decoders.messages()
    finished = False
    try:
        for message in messages:
            run.dispatch(message, decoders)
        run.finish()
        finished = True
    finally:
        # Stop the decoder processes now, not whenever the iterator is collected: none may still take a lock
        # after ours are released below.
        decoders.stop()
        del messages
        run.close()
        try:
            out.end_run(finished)
        finally:
            decoders.close()
    return summary


def _plan(records: list[VideoRecord], keys: list[str], out: OutputDir, wanted: dict[str, Any],
          summary: ExtractSummary) -> list[tuple[VideoRecord, str]]:
    """The videos still to do; finished ones must have been extracted with the same settings."""
    todo = []
    for record, key in zip(records, keys):
        if out.is_done(key):
            out.check_same_settings(key, wanted)
            summary.skipped += 1
        else:
            todo.append((record, key))
    if summary.skipped:
        log.info("%d of %d videos already extracted in %s: skipped", summary.skipped, len(records), out.path)
    return todo


class _Extraction:
    """This process's side of one `extract` run: videos in progress, the batches and the writers."""

    def __init__(self, todo: list[tuple[VideoRecord, str]], out: OutputDir, runner: ClipRunner,
                 options: ExtractOptions, summary: ExtractSummary, clip_shape: tuple[int, ...], progress: bool,
                 total: int) -> None:
        self.todo, self.out, self.runner, self.options, self.summary = todo, out, runner, options, summary
        self.jobs: dict[int, VideoJob] = {}  # started and not yet written (or failed)
        self.batcher = Batcher(runner, options.batch_size, clip_shape, self._row, self._collect,
                               group=options.recipe.num_crops)  # a clip's crops in one batch
        self.writers = WriterPool(runner, options)
        self.bar = progress_bar(total, "extract", "video", summary.skipped, progress)
        self.start = time.perf_counter()

    def dispatch(self, message: Skipped | Busy | Started | Clips | Failed, decoders: DecoderLoader) -> None:
        match message:
            case Skipped():
                self.summary.skipped += 1
                self.bar.update(1)
            case Busy():
                self.summary.busy += 1
                self.bar.update(1)
            case Started(index=i, meta=meta):
                job = self.jobs[i] = self._job(i)
                job.open(meta, self.runner.dim, self.options)
            case Clips(index=i, first=first):
                self.batcher.add(self.jobs[i], first, decoders.clips(message))  # copied into the batch...
                decoders.release(message)  # ...so its ring slots are free again
            case Failed(error=error, fatal=True):
                raise OutputError(error)
            case Failed(index=i, error=error):
                self._fail(self.jobs.pop(i, None) or self._job(i), DataError(error))

    def finish(self) -> None:
        """Run the last partial batch, wait for every batch and every write."""
        self.batcher.flush()
        self.batcher.drain()
        self._collect(wait=True)

    def close(self) -> None:
        """After the run or an error: stop the writers, drop the rows of unfinished videos."""
        self.batcher.clear()
        self.writers.close()  # no writer may still be using a job dropped below
        for job in self.jobs.values():  # unfinished (an error or an interrupt): drop their partial rows
            job.discard()  # (harmless for one whose writer finished after the error)
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start

    def _job(self, i: int) -> VideoJob:
        record, key = self.todo[i]
        return VideoJob(record, key, self.out, self.out.held_lock(key), i)

    def _row(self, job: VideoJob, k: int, row: np.ndarray) -> None:
        crops = self.options.recipe.num_crops
        self.summary.clips += int(k % crops == crops - 1)  # a clip is counted once, at its last crop's row
        if job.add(k, row):
            self.writers.submit(job)

    def _collect(self, wait: bool = False) -> None:
        """Count the videos whose outputs are written."""
        count_written(self.writers.collect(wait), self.jobs, self.summary, self.bar, self.start)

    def _fail(self, job: VideoJob, error: DataError) -> None:
        self.batcher.drop(job)  # its rows already staged are computed, but go nowhere
        job.discard()
        self.bar.update(1)
        if not self.options.skip_bad:
            raise error
        log.warning("skipped: %s", error)
        self.summary.failed.append((str(job.record.path), str(error)))
        self.out.write_failed(job.key, str(job.record.real_path), str(error))
