"""Feature extraction at scale: streaming decode, clips batched across videos, resumable, concurrent-safe.

Every video is decoded once, front to back, in chunks (`iter_frames`), resized in the decoder and centre-cropped
as the weights' `Preprocess` says; a small buffer keeps only the frames that the next sliding clips still need,
so memory stays bounded whatever the video's length. Decoder threads (one video each) put clips on a bounded
queue; the main thread fills fixed-size batches from it, mixing videos, so the device never waits for one
video's tail. Rows of long videos go straight to a memory-mapped temporary `.npy`.

Output folder layout (several processes or torchrun ranks may share it):
    OUT/<key>.npy            (num_clips, dim) float32, or (dim,) with `video_mean`; written to a temporary
                             file and renamed, so it is either absent or complete
    OUT/.parts/<key>.json    this video's manifest entry, written (atomically) after its .npy: the mark of done
    OUT/.parts/<key>.failed  why an unreadable video failed (with skip_bad)
    OUT/.locks/<key>.lock    "pid host" of the process working on it (O_CREAT|O_EXCL; dead pids are reclaimed)
    OUT/manifest.jsonl       every finished video's entry, merged from .parts at the end of each run
    OUT/failed.txt           "path<TAB>reason" per failed video, merged likewise

Example:
    >>> from c3dnet.features import ClipRunner, ExtractOptions, extract
    >>> runner = ClipRunner(model, "fc6", device)                                        # doctest: +SKIP
    >>> summary = extract(records, runner, "feats/", ExtractOptions(video_mean=True, l2=True))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.data import sampling
from c3dnet.errors import DataError
from c3dnet.fileio import atomic_write, atomic_write_text
from c3dnet.log import get_logger
from c3dnet.preprocess import Preprocess

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)

OUTPUTS = ("logits", "pool5", "fc6", "fc7")
PARTS_DIR = ".parts"
LOCKS_DIR = ".locks"
MANIFEST = "manifest.jsonl"
FAILED = "failed.txt"
TMP_TAG = "c3dpart-"
_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------------------------------- the model


class ClipRunner:
    """uint8 RGB clips (B, 3, T, crop, crop) -> float32 rows (B, D) of one output of a C3D or an ONNX model.

    Normalisation follows the model's own `preprocess`; a PyTorch model runs on `device` (bf16 autocast and
    channels_last_3d on CUDA when `amp`), an `OnnxC3D` through ONNX Runtime.
    """

    def __init__(self, model: C3D | OnnxC3D, output: str = "fc6", device: torch.device | str = "cpu",
                 amp: bool = True) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model, self.output, self.amp = model, output, amp
        self.device = torch.device(device)
        self.preprocess: Preprocess = model.preprocess
        self.is_onnx = not isinstance(model, torch.nn.Module)
        if not self.is_onnx:
            from c3dnet.engine.device import prepare_model

            self.model = prepare_model(model.eval(), self.device)
        self.dim = model.num_classes if output == "logits" else model.feature_dims[output]

    @property
    def clip_len(self) -> int:
        return self.preprocess.clip_len

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        from c3dnet.data.transforms import normalize

        if self.is_onnx:
            return self.model.run(normalize(clips, self.preprocess), [self.output])[0].astype(np.float32)
        from c3dnet.engine.device import inference_context, to_input

        with inference_context(self.device, self.amp):
            x = to_input(clips, self.preprocess, self.device)  # (B, 3, T, H, W) float32 on the device
            out = self.model(x) if self.output == "logits" else self.model.forward_features(x, self.output)
        return out.float().cpu().numpy()


# --------------------------------------------------------------------------------------------------- clips


def clip_starts(num_frames: int, preprocess: Preprocess, stride: int) -> np.ndarray:
    """Start frames of the sliding clips of a video: 0, stride, 2*stride, ... while a clip fits; [0] if none fits."""
    return sampling.sliding_start_frames(num_frames, preprocess.clip_len, stride, preprocess.frame_interval)


def _crop_chunk(chunk: np.ndarray, crop: int, path: Path) -> np.ndarray:
    """Centre crop of decoded frames (n, H, W, 3), offsets rounded down as `transforms.center_crop` does.

    numpy rather than torch: this runs in decoder threads, where torch's intra-op thread pool would compete
    with the model's for the same cores.
    """
    h, w = chunk.shape[1:3]
    if h < crop or w < crop:
        raise DataError(f"{path}: frames of {h}x{w} after resizing are smaller than the {crop}x{crop} crop; "
                        "the weights' preprocessing does not fit this video")
    top, left = (h - crop) // 2, (w - crop) // 2
    return np.ascontiguousarray(chunk[:, top:top + crop, left:left + crop])  # (n, crop, crop, 3), a copy


def stream_clips(path: str | os.PathLike[str], preprocess: Preprocess, stride: int, num_frames: int,
                 size_hw: tuple[int, int] | None, chunk: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
    """(clip number, uint8 clip (3, T, crop, crop)) for each sliding clip, decoding the video once, in order.

    Only frames that a pending clip still needs are kept (at most about one clip span plus one chunk), so
    memory does not grow with the video's length. Short videos (fewer frames than a clip) wrap around, as
    `sampling.clip_indices` does.
    """
    from c3dnet.data.decode import iter_frames

    path = Path(path)
    starts = clip_starts(num_frames, preprocess, stride)
    idx = sampling.clip_indices(starts, num_frames, preprocess.clip_len, preprocess.frame_interval)  # (K, T)
    first_needed, last_needed = idx.min(axis=1), idx.max(axis=1)
    buffer: dict[int, np.ndarray] = {}
    k, j = 0, 0
    for frames in iter_frames(path, size_hw=size_hw, chunk=chunk):
        cropped = _crop_chunk(frames, preprocess.crop_size, path)  # (n, crop, crop, 3)
        del frames
        for t in range(cropped.shape[0]):
            if k < len(idx) and j >= first_needed[k]:
                buffer[j] = cropped[t]
            while k < len(idx) and last_needed[k] <= j:
                clip = np.stack([buffer[int(i)] for i in idx[k]])  # (T, crop, crop, 3)
                yield k, torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))  # (3, T, crop, crop)
                k += 1
                if k < len(idx):
                    for old in [i for i in buffer if i < first_needed[k]]:
                        del buffer[old]
            j += 1
    if k != len(idx):
        raise DataError(f"{path}: decoded {j} frames but the container lists {num_frames}; the file is corrupt "
                        "or truncated: re-encode or remove it (or use --skip-bad)")


# --------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    """One extracted video: where its features are and which clips they come from."""

    key: str
    output: str  # file name inside the output folder
    video: str  # absolute source path
    layer: str
    num_frames: int
    fps: float
    clip_starts: list[int]
    clip_len: int
    frame_interval: int
    stride: int
    video_mean: bool
    l2: bool
    dim: int
    weights: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def read_manifest(out_dir: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Every finished video's entry in an extraction folder (from its per-video parts, so never stale)."""
    out_dir = Path(out_dir)
    parts = sorted((out_dir / PARTS_DIR).glob("*.json"))
    if not parts and (out_dir / MANIFEST).is_file():  # a folder copied without its hidden parts
        lines = (out_dir / MANIFEST).read_text(encoding="utf-8").splitlines()
        return [_parse_entry(line, f"{out_dir / MANIFEST}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    return [_parse_entry(p.read_text(encoding="utf-8"), str(p)) for p in parts]


def _parse_entry(text: str, where: str) -> ManifestEntry:
    try:
        return ManifestEntry.from_dict(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{where}: not a c3d extract manifest entry ({e}); re-run `c3d extract` on that video") from e


def load_features(out_dir: str | os.PathLike[str], entry: ManifestEntry) -> np.ndarray:
    return np.load(Path(out_dir) / entry.output, allow_pickle=False)


def output_keys(records: list[VideoRecord]) -> list[str]:
    """File stem per record: the video's name, plus a hash of its path when two inputs share a name."""
    stems = [r.path.name if r.path.is_dir() else r.path.stem for r in records]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(r.path.resolve()).encode()).hexdigest()[:8]}"
            for s, r in zip(stems, records)]


# --------------------------------------------------------------------------------------------------- locks


class VideoLock:
    """A per-video lock file created with O_CREAT|O_EXCL holding "pid host"; a dead owner's lock is reclaimed.

    Correctness never rests on the lock alone: outputs are renamed into place complete, so two processes that
    both extract a video (a lock race, or a lock on another host that died) still leave one complete file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._reclaim_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
            self.held = True
            return True
        return False

    def _reclaim_stale(self) -> bool:
        try:
            owner = self.path.read_text().strip()
        except FileNotFoundError:
            return True  # released meanwhile: try again
        if not _is_dead(owner):
            return False
        # Rename (atomic) rather than unlink, and check that what we took is the dead owner's lock: a
        # process that reclaimed it first and wrote its own must keep it.
        grabbed = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, grabbed)
        except FileNotFoundError:
            return True
        if grabbed.read_text().strip() == owner:
            grabbed.unlink()
            log.info("%s: reclaimed the lock of a dead process (%s)", self.path.name, owner)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(grabbed, self.path)  # put a live owner's lock back
        grabbed.unlink()
        return False

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                if self.path.read_text().strip() == self.token:
                    self.path.unlink()
            self.held = False


def _is_dead(owner: str) -> bool:
    """True when the lock's owner "pid host" is a process on this host that no longer runs."""
    try:
        pid_text, host = owner.split(maxsplit=1)
        pid = int(pid_text)
    except ValueError:
        return True  # an empty or torn lock file: its writer died between create and write
    if host != socket.gethostname():
        return False  # cannot check another machine's processes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _is_done(out_dir: Path, key: str) -> bool:
    return (out_dir / PARTS_DIR / f"{key}.json").is_file() and (out_dir / f"{key}.npy").is_file()


def _finish(job: _Job, runner: ClipRunner, options: ExtractOptions) -> None:
    """Write the video's .npy (rename into place), then its manifest part, then release its lock."""
    out = job.out_dir / f"{job.key}.npy"
    assert job.rows is not None
    if options.video_mean:
        feats = (job.rows[0] / max(job.received, 1)).astype(np.float32)  # (dim,)
        if options.l2:
            feats = _l2(feats)
        with atomic_write(out, "wb") as f:
            np.save(f, feats)
    else:
        if options.l2:
            for lo in range(0, len(job.rows), 4096):  # in blocks: the rows live on disk
                job.rows[lo:lo + 4096] = _l2(np.asarray(job.rows[lo:lo + 4096]))
        job.rows.flush()
        del job.rows
        job.rows = None
        with open(job.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(job.tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should be readable as usual
        os.replace(job.tmp, out)
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


def _clear_stale_locks(out_dir: Path) -> None:
    """Locks of finished videos whose owner died between writing the outputs and releasing the lock."""
    for path in (out_dir / LOCKS_DIR).glob("*.lock"):
        if _is_done(out_dir, path.stem):
            lock = VideoLock(path)
            if lock.acquire():
                lock.release()


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


def write_merged_manifest(out_dir: str | os.PathLike[str]) -> int:
    """(Re)write OUT/manifest.jsonl and OUT/failed.txt from the per-video parts; returns the entry count."""
    out_dir = Path(out_dir)
    entries = read_manifest(out_dir)
    atomic_write_text(out_dir / MANIFEST, "".join(json.dumps(e.to_dict()) + "\n" for e in entries))
    failed = []
    for p in sorted((out_dir / PARTS_DIR).glob("*.failed")):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            d = json.loads(p.read_text(encoding="utf-8"))
            failed.append(f"{d['video']}\t{d['error']}\n")
    if failed or (out_dir / FAILED).exists():
        atomic_write_text(out_dir / FAILED, "".join(failed))
    return len(entries)


def _progress_bar(total: int, initial: int, enabled: bool):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="video", desc="extract", dynamic_ncols=True,
                disable=not enabled)


def _postfix(bar, summary: ExtractSummary, start: float) -> None:
    elapsed = max(time.perf_counter() - start, 1e-9)
    bar.set_postfix_str(f"{summary.frames / elapsed:.0f} frames/s, {summary.clips / elapsed:.1f} clips/s")
