"""`c3d prepare`: a video dataset -> JPEG frame folders with the seed's annotation lists, resumable and parallel.

Output layout (paths in the lists are relative to OUT):
    OUT/classes.txt                         one class name per line, line k = label k - 1
    OUT/train_split{N}.txt, test_split{N}.txt   lines `frames/<Class>/<video_stem> <num_frames> <label>`
    OUT/frames/<Class>/<video_stem>/img_00001.jpg ...
    OUT/failed.txt                          every video (or annotation line) that could not be used, and why

Each video's frames are written into a hidden temporary folder beside its final one and renamed into place when
complete, so an interrupted run leaves no half-extracted video behind, and a rerun skips every finished video
(several jobs may share OUT: a temporary folder is only cleaned up by a later run on the same host once the
process that wrote it is gone). Lists and reports are written atomically.

Example:
    >>> result = prepare_dataset("data/UCF-101", "data/ucf101_frames", workers=8)     # doctest: +SKIP
    >>> result.summary()                                                             # doctest: +SKIP
    'prepared 13320 videos (13320 extracted, 0 already done, 0 failed) for splits [1, 2, 3] in data/ucf101_frames'
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from c3dnet.data.decode import FRAME_TEMPLATE, iter_frames, video_info
from c3dnet.data.resize import rescale_size, resize_frames
from c3dnet.data.sources import SkippedItem, Source, available_splits, load_source
from c3dnet.data.timing import TIMING_FILE
from c3dnet.data.video_index import BestEffortTimestamps
from c3dnet.errors import DataError
from c3dnet.fileio import atomic_write_text, pid_alive
from c3dnet.forks import loader_context
from c3dnet.log import get_logger, progress_bar

log = get_logger(__name__)

FRAMES_DIR = "frames"
PARTIAL = ".partial-"


@dataclass
class PrepareResult:
    """What a `prepare_dataset` run did."""

    out: Path
    splits: list[int]
    num_videos: int = 0
    extracted: int = 0
    already_done: int = 0
    failed: list[SkippedItem] = field(default_factory=list)

    def summary(self) -> str:
        return (f"prepared {self.num_videos - len(self.failed)} videos ({self.extracted} extracted, "
                f"{self.already_done} already done, {len(self.failed)} failed) for splits {self.splits} in {self.out}")


@dataclass(frozen=True)
class _Task:
    video: Path
    dst: Path
    short_side: int
    quality: int
    autorotate: bool = True


def prepare_dataset(
    data: str | Path,
    out: str | Path,
    split: int | None = None,
    short_side: int = 128,
    workers: int = 1,
    skip_bad: bool = False,
    quality: int = 95,
    splits_dir: str | Path | None = None,
    progress: bool = True,
    autorotate: bool = True,
) -> PrepareResult:
    """Extract every video of `data`'s official splits (or split `split`) into frame folders under `out`.

    Args:
        data: a video dataset: UCF-101 or HMDB-51 folder, or a folder with one subfolder of videos per class.
        out: output folder (created; reruns resume in place).
        split: only this official split; None: every split found.
        short_side: resize frames so the short side is this (320x240 -> 171x128); 0 keeps the original size.
        workers: parallel extraction processes.
        skip_bad: leave out (and report) bad annotation lines and videos that fail to decode, instead of failing.
        quality: JPEG quality 1-100.
        splits_dir: the official split files' folder, when not inside or beside `data`.
        progress: show progress (a bar on a terminal, periodic lines elsewhere).
        autorotate: turn frames as each video's display matrix says (FFmpeg's default); False keeps the coded
            orientation.

    Raises:
        DataError: an unusable source, or (without `skip_bad`) videos that failed; `failed.txt` lists them.
    """
    if short_side < 0 or not 1 <= quality <= 100 or workers < 1:
        raise ValueError(f"need short_side >= 0, quality in 1..100 and workers >= 1, got {short_side}, "
                         f"{quality}, {workers}")
    out = Path(out)
    splits = [split] if split is not None else available_splits(data, splits_dir)
    subsets = {(n, s): load_source(data, s, n, splits_dir, skip_bad) for n in splits for s in ("train", "test")}
    first = next(iter(subsets.values()))
    _check_source(Path(data), first)
    classes = first.class_names

    videos: dict[Path, Path] = {}  # video -> its frame folder, relative to out
    owner: dict[Path, Path] = {}  # frame folder -> video, to catch two videos mapped to one folder
    for src in subsets.values():
        for r in src.records:
            rel = Path(FRAMES_DIR) / classes[r.label] / r.path.stem
            if owner.setdefault(rel, r.path) != r.path:
                raise DataError(f"{r.path} and {owner[rel]} would both be extracted to {out / rel}; rename one")
            videos[r.path] = rel

    result = PrepareResult(out=out, splits=splits, num_videos=len(videos))
    result.failed = [item for src in subsets.values() for item in src.skipped]
    result.failed = list(dict.fromkeys(result.failed))  # the same bad line shows up in train and test
    counts: dict[Path, int] = {}
    tasks = []
    for video, rel in videos.items():
        if (out / rel).is_dir():
            counts[video] = _count_jpegs(out / rel)
            result.already_done += 1
        else:
            tasks.append(_Task(video, out / rel, short_side, quality, autorotate))
    log.info("%s: %d videos, %d already extracted, %d to extract with %d worker(s)",
             data, len(videos), result.already_done, len(tasks), workers)

    for video, n, error in _run(tasks, workers, progress):
        if error is None:
            counts[video] = n
            result.extracted += 1
        else:
            result.failed.append(SkippedItem(str(video), error))

    _write_failed(out, result.failed)
    bad_videos = [f for f in result.failed if Path(f.where) in videos]
    if bad_videos and not skip_bad:
        raise DataError(f"{len(bad_videos)} video(s) failed, first: {bad_videos[0].reason} (all listed in "
                        f"{out / 'failed.txt'}); fix or remove them, or rerun with --skip-bad to leave them out")
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    for (n, subset), src in subsets.items():
        lines = [f"{videos[r.path].as_posix()} {counts[r.path]} {r.label}\n" for r in src.records if r.path in counts]
        atomic_write_text(out / f"{subset}_split{n}.txt", "".join(lines))
    return result


def _check_source(data: Path, src: Source) -> None:
    if src.format in ("frames", "list_frames") or any(r.is_frames for r in src.records[:1]):
        raise DataError(f"{data}: already holds frame folders; `c3d prepare` extracts frames from videos "
                        "(give the video dataset folder)")
    if src.format.startswith("list"):
        raise DataError(f"{data}: `c3d prepare` needs a dataset folder (UCF-101, HMDB-51, or one subfolder per "
                        "class), not an annotation list")


def _count_jpegs(folder: Path) -> int:
    return video_info(folder).num_frames  # also checks the numbering is complete


def _run(tasks: list[_Task], workers: int, progress: bool):
    bar = progress_bar(len(tasks), "prepare", "video", enabled=progress and bool(tasks))
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield _extract_task(task)
                bar.update()
            return
        with (loader_context(workers) or multiprocessing.get_context()).Pool(workers) as pool:
            for item in pool.imap_unordered(_extract_task, tasks):
                yield item
                bar.update()
    finally:
        bar.close()


def _extract_task(task: _Task) -> tuple[Path, int, str | None]:
    try:
        return task.video, extract_video(task.video, task.dst, task.short_side, task.quality, task.autorotate), None
    except DataError as e:
        return task.video, 0, str(e)


def extract_video(video: Path, dst: Path, short_side: int = 128, quality: int = 95, autorotate: bool = True) -> int:
    """Write `video`'s frames as `dst/img_00001.jpg`, ... via a temporary folder renamed when complete.

    Frames are FFmpeg's, in its order, turned as the display matrix says (unless `autorotate=False`), resized
    to `short_side` by OpenCV `INTER_LINEAR` as the seed resizes (0: kept), then JPEG-encoded at `quality`.
    Returns the number of frames. A `dst` that already exists is complete by construction and is kept. The
    frames' presentation times go to `dst/timing.json` (`data.timing`), for sampling at a fixed fps later.
    """
    from PIL import Image

    if dst.is_dir():
        return _count_jpegs(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(dst)
    tmp = dst.parent / f".{dst.name}{PARTIAL}{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    try:
        count, recorder = 0, BestEffortTimestamps()
        for chunk in iter_frames(video, autorotate=autorotate, times=recorder):
            if short_side:
                chunk = resize_frames(chunk, rescale_size(*chunk.shape[1:3], short_side))
            for frame in chunk:
                count += 1
                Image.fromarray(frame).save(tmp / FRAME_TEMPLATE.format(count), quality=quality)
        times = recorder.frame_times()  # when each frame is shown: what `--fps` needs, kept beside the frames
        if times is not None and times.num_frames == count:
            atomic_write_text(tmp / TIMING_FILE, json.dumps(times.to_dict()) + "\n")
        try:
            os.rename(tmp, dst)
        except OSError:
            if not dst.is_dir():  # a real failure, not another job finishing the same video first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return count
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{video}: writing frames to {tmp} failed ({e.strerror or e}); check free space") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_partials(dst: Path) -> None:
    """Remove temporary folders of `dst` left by dead processes on this host (an earlier, interrupted run)."""
    host = socket.gethostname()
    for p in dst.parent.glob(f".{dst.name}{PARTIAL}*"):
        owner_host, _, pid = p.name.rsplit(PARTIAL, 1)[1].rpartition("-")
        # our own pid: a leftover of an earlier call in this process
        if owner_host == host and pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def _write_failed(out: Path, failed: list[SkippedItem]) -> None:
    atomic_write_text(out / "failed.txt", "".join(f"{f.where}\t{f.reason}\n" for f in failed))
