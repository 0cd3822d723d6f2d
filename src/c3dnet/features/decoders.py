"""Decoder processes: each takes the next video to do, locks it, decodes it once and sends its clips.

They run as the workers of a `DataLoader` over `VideoDecoder` (an IterableDataset). Videos are handed out through
a shared counter, so a process that finishes early takes the next one. Clips travel through `Rings` of shared
memory (after a fork; a message then carries slot numbers only) or, where processes are spawned, as tensors.
Messages are small dataclasses: `Skipped`, `Busy`, `Started`, `Clips`, `Failed`.

Example:
    >>> loader = decoder_loader(todo, OutputDir("feats"), runner, ExtractOptions(workers=4))   # doctest: +SKIP
    >>> for message in loader.messages(): ...                                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from c3dnet.errors import C3DError, DataError
from c3dnet.features.options import ExtractOptions
from c3dnet.features.output import OutputDir
from c3dnet.forks import FORK
from c3dnet.inference.clips import ClipPlan, CropView, clip_frames, frame_views
from c3dnet.inference.runner import ClipRunner

if TYPE_CHECKING:
    from c3dnet.data.sources import VideoRecord
    from c3dnet.preprocess import Preprocess

CLIPS_PER_MESSAGE = 16  # clips per message from a decoder process: bounded memory, few messages
RING_SLOTS = 4 * CLIPS_PER_MESSAGE  # clip slots per decoder process in the shared rings


# --------------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class VideoMeta:
    """What a decoder process learns of a video before its first clip; `views`: the crops of each clip, cut from
    its frames resized to `size_hw`."""

    num_frames: int
    fps: float
    orientation: str
    size_hw: tuple[int, int]
    plan: ClipPlan
    views: tuple[CropView, ...] = ()

    @property
    def starts(self) -> list[int]:
        return self.plan.starts.tolist()

    @classmethod
    def of(cls, record: VideoRecord, preprocess: Preprocess, options: ExtractOptions) -> VideoMeta:
        from c3dnet.data.decode import video_info

        info = video_info(record.path, options.autorotate)
        recipe = options.recipe
        plan = ClipPlan.of(record.path, info.num_frames, preprocess, recipe.stride, recipe.fps, options.source_fps)
        size = preprocess.resize_target(info.height, info.width)
        views = frame_views(record.path, *size, preprocess, recipe.crop_set)  # a crop that does not fit: DataError
        return cls(info.num_frames, info.fps, info.orientation, size, plan, tuple(views))


@dataclass(frozen=True)
class Skipped:
    """Video `index` was done already (by another process, perhaps meanwhile)."""

    index: int


@dataclass(frozen=True)
class Busy:
    """Video `index` is locked by another live process."""

    index: int


@dataclass(frozen=True)
class Started:
    """Video `index` is locked for this extraction and being decoded."""

    index: int
    meta: VideoMeta


@dataclass(frozen=True)
class Clips:
    """Clips `first`, `first + 1`, ... of video `index` (views, with crops: `inference.clips` numbers them):
    `count` consecutive slots of decoder `worker`'s ring from `slot`, or, without rings, `tensor` uint8
    (count, T, crop, crop, 3)."""

    index: int
    first: int
    count: int
    worker: int = 0
    slot: int = 0
    tensor: torch.Tensor | None = None


@dataclass(frozen=True)
class Failed:
    """Video `index` could not be read (its clips sent before the failure are to be dropped); `fatal`: the output
    folder failed (no lock could be written there: a full disk, say), which stops the extraction whatever
    `skip_bad` says."""

    index: int
    error: str
    fatal: bool = False


Message = Skipped | Busy | Started | Clips | Failed


# --------------------------------------------------------------------------------------------------- rings


class Stopped(Exception):
    """The extraction ended (an error, an interrupt, or its process died) while a decoder process waited."""


class Rings:
    """A ring of clip slots (T, crop, crop, 3) per decoder process, in memory shared with this process.

    One anonymous shared mapping made before the fork: nothing goes through /dev/shm, and no memory is mapped
    per message (a fresh shared-memory tensor per message costs this process page faults on every page it
    reads: about 0.4 ms a clip against 0.06 ms for a copy from memory already mapped). A decoder process takes
    its slots in order, waiting on its semaphore when all are in use; messages then carry only slot numbers,
    and this process frees the slots, in the same order, once it has copied the clips out.
    """

    def __init__(self, context: Any, workers: int, clip_shape: tuple[int, ...], slots: int | None = None) -> None:
        self.slots = slots or RING_SLOTS
        size = workers * self.slots * int(np.prod(clip_shape))
        self._map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS, inherited by the forked processes
        self.array = np.frombuffer(self._map, dtype=np.uint8).reshape(workers, self.slots, *clip_shape)
        self.free = [context.Semaphore(self.slots) for _ in range(workers)]
        self.stop = context.Event()
        self.owner_pid = os.getpid()
        self.next = 0  # in a decoder process: its next slot

    def take(self, worker: int) -> int:
        """In decoder process `worker`: its next slot, once free; `Stopped` if the extraction ended."""
        while not self.free[worker].acquire(timeout=0.5):
            if self.stop.is_set() or os.getppid() != self.owner_pid:
                raise Stopped
        slot, self.next = self.next, (self.next + 1) % self.slots
        return slot

    def clips(self, message: Clips) -> np.ndarray:
        """The clips a message names (a view: copy them, then `release` the message)."""
        return self.array[message.worker, message.slot:message.slot + message.count]

    def release(self, message: Clips) -> None:
        for _ in range(message.count):
            self.free[message.worker].release()

    def close(self) -> None:
        del self.array
        with contextlib.suppress(BufferError):  # a view still held (by a traceback, say): freed when collected
            self._map.close()


# --------------------------------------------------------------------------------------------------- decoders


class VideoDecoder(torch.utils.data.IterableDataset):
    """Runs in each decoder process: takes the next video to do, locks it, and streams its clips as messages.

    Locks are taken for the extracting process (`owner_pid`), so that a lock lives exactly as long as the
    process that writes the video's outputs.
    """

    def __init__(self, todo: list[tuple[VideoRecord, str]], out: OutputDir, preprocess: Preprocess,
                 options: ExtractOptions, counter: Any, rings: Rings | None) -> None:
        self.todo, self.out, self.options, self.counter, self.rings = todo, out, options, counter, rings
        self.leftovers = out.leftovers({key for _, key in todo})
        self.preprocess = preprocess
        self.owner_pid = os.getpid()

    def _indices(self, info: Any) -> Iterator[int]:
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

    def __iter__(self) -> Iterator[Message]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            from c3dnet.data.decode import set_decode_threads

            torch.set_num_threads(1)
            set_decode_threads(1)  # the processes already share the cores out
        worker = info.id if info is not None else 0
        with contextlib.suppress(Stopped):
            for i in self._indices(info):
                yield from self._video(i, worker)

    def _video(self, i: int, worker: int) -> Iterator[Message]:
        record, key = self.todo[i]
        if self.out.is_done(key):
            yield Skipped(i)
            return
        lock = self.out.lock(key, owner_pid=self.owner_pid)
        try:
            acquired = lock.acquire()
        except C3DError as e:  # the folder, not the video: sent as a message, not raised through the DataLoader
            yield Failed(i, str(e), fatal=True)
            return
        if not acquired:
            yield Busy(i)
            return
        self.out.remove(self.leftovers.get(key, []))
        if self.out.is_done(key):  # finished by another process between our check and our lock
            lock.release()
            yield Skipped(i)
            return
        batch = _MessageBatch(i, worker, self.rings)
        try:
            meta = VideoMeta.of(record, self.preprocess, self.options)
            yield Started(i, meta)
            recipe = self.options.recipe
            for k, frames in clip_frames(record.path, self.preprocess, recipe.stride, meta.num_frames, meta.size_hw,
                                         self.options.chunk, self.options.autorotate, meta.plan.indices,
                                         recipe.crop_set):  # each crop of each clip, from one decode
                if batch.add(k, frames):
                    yield batch.send()
            if batch.count:
                yield batch.send()
        except DataError as e:
            if batch.count:  # slots taken must reach the other side to be freed; the rows are then dropped there
                yield batch.send()
            yield Failed(i, str(e))


class _MessageBatch:
    """The clips of the message being filled: slots of this process's ring, or clips of its own."""

    def __init__(self, index: int, worker: int, rings: Rings | None) -> None:
        self.index, self.worker, self.rings = index, worker, rings
        self.first, self.slot, self.count = 0, 0, 0
        self.clips: list[np.ndarray] = []

    def add(self, k: int, frames: list[np.ndarray]) -> bool:
        """Stack clip `k` into its place; True when the message is full (or at its ring's end) and must go."""
        if self.count == 0:
            self.first = k
        if self.rings is not None:
            slot = self.rings.take(self.worker)
            if self.count == 0:
                self.slot = slot
            np.stack(frames, out=self.rings.array[self.worker, slot])  # the clip's one copy
        else:
            slot = -1
            self.clips.append(np.stack(frames))
        self.count += 1
        # A message's slots are consecutive: it ends at the ring's end as well.
        return self.count == CLIPS_PER_MESSAGE or (self.rings is not None and slot == self.rings.slots - 1)

    def send(self) -> Clips:
        if self.rings is not None:
            message = Clips(self.index, self.first, self.count, self.worker, self.slot)
        else:
            message = Clips(self.index, self.first, self.count, tensor=torch.from_numpy(np.stack(self.clips)))
        self.count, self.clips = 0, []
        return message


class DecoderLoader:
    """The decoder processes of one extraction: `messages()` yields what they send, as it comes."""

    def __init__(self, todo: list[tuple[VideoRecord, str]], out: OutputDir, runner: ClipRunner,
                 options: ExtractOptions) -> None:
        import multiprocessing

        options.recipe.check_model(runner.dim, runner.preprocess)  # a PCA for another layer: before any decoding
        workers = max(1, min(options.workers, len(todo)))
        fork = "fork" in multiprocessing.get_all_start_methods()
        context = FORK if fork else multiprocessing.get_context(None)  # c3dnet's forks: see `c3dnet.forks`
        counter = context.Value("q", 0) if fork else None  # inherited by the forked decoder processes
        pre = runner.preprocess
        self.clip_shape = (runner.clip_len, pre.crop_size, pre.crop_size, 3)  # channels last: as decoded
        self.rings = Rings(context, workers, self.clip_shape) if fork and todo else None
        # Messages as they come, not round-robin over the processes (PyTorch >= 2.6; older ones keep the order).
        params = inspect.signature(torch.utils.data.DataLoader).parameters
        as_ready = {"in_order": False} if "in_order" in params else {}
        self.todo = todo
        self.loader = torch.utils.data.DataLoader(
            VideoDecoder(todo, out, pre, options, counter, self.rings), batch_size=None, num_workers=workers,
            multiprocessing_context=context, prefetch_factor=4, collate_fn=_as_is, **as_ready)

    def messages(self) -> Iterator[Message]:
        return iter(self.loader) if self.todo else iter(())

    def clips(self, message: Clips) -> np.ndarray:
        """The clips of a message (n, T, crop, crop, 3); call `release` once they are copied."""
        return self.rings.clips(message) if message.tensor is None else message.tensor.numpy()

    def release(self, message: Clips) -> None:
        if message.tensor is None:
            self.rings.release(message)

    def stop(self) -> None:
        """Wake any decoder process waiting for a ring slot, so that it ends."""
        if self.rings is not None:
            self.rings.stop.set()

    def close(self) -> None:
        if self.rings is not None:
            self.rings.close()


def _as_is(message: Message) -> Message:
    """The DataLoader's conversion of unbatched items, replaced: messages arrive as they were sent."""
    return message
