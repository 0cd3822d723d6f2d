"""The work a Ray cluster does for `c3d extract --ray`: decode tasks and the model's actors.

These run in Ray's worker processes, on any node; the driver (`features.ray_extract`) plans them and writes the
outputs. Rows between the stages are columns of numpy arrays (`ROW_COLUMNS`), one row per view of a clip:

- `decode_video` (a CPU task per video): c3dnet's own frame-accurate decoder (`inference.clips.clip_frames`, the
  decoder processes' path) streams the video's clips in chunks of at most `CHUNK_BYTES`, so no task holds a
  whole long video. The first row of a video (view 0) carries its `VideoMeta`, pickled; a video that cannot be
  read ends with one row whose `error` says why.
- `ClipActor` (an actor pool, on GPUs or CPUs): runs the backend from `inference.backends.load_backend` on
  batches of rows, padded to one fixed size as the `Batcher` of a plain `c3d extract` pads them, so each row's
  float bits are those of a plain run.

Example:
    >>> rows = next(decode_video({"index": np.array([0]), "path": np.array(["v.mp4"])}, pre, options))  # doctest: +SKIP
    >>> rows["clip"].shape                     # (n, T, crop, crop, 3) uint8, n * clip bytes <= CHUNK_BYTES
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from c3dnet.errors import DataError

if TYPE_CHECKING:
    from c3dnet.features.options import ExtractOptions
    from c3dnet.preprocess import Preprocess

CHUNK_BYTES = 4 * 2**20
"""Clip bytes per block a decode task yields (6 full-size clips of 16 x 112 x 112 x 3): small objects, streamed."""
MAX_CLIPS_PER_CHUNK = 16

ROW_COLUMNS = ("index", "view", "meta", "error")
"""Columns every row carries (the decode rows add `clip`, the actors' rows `row`): the video's number in the
driver's list, the view's number (`inference.clips`), the pickled `VideoMeta` on view 0 (b"" elsewhere), and
the error that ended the video ("" on clip rows)."""


def clips_per_chunk(clip_shape: tuple[int, ...]) -> int:
    """Clips per yielded chunk: at most `CHUNK_BYTES` of them (at least one), at most `MAX_CLIPS_PER_CHUNK`."""
    return max(1, min(MAX_CLIPS_PER_CHUNK, CHUNK_BYTES // int(np.prod(clip_shape))))


def _rows(index: int, views: list[int], clips: np.ndarray, meta: bytes = b"", error: str = "") -> dict[str, Any]:
    n = len(views)
    metas = np.array([meta] + [b""] * (n - 1), dtype=object)
    return {"index": np.full(n, index, dtype=np.int64), "view": np.asarray(views, dtype=np.int64), "clip": clips,
            "meta": metas, "error": np.array([error] * n, dtype=object)}


def decode_video(batch: dict[str, np.ndarray], preprocess: Preprocess,
                 options: ExtractOptions) -> Iterator[dict[str, Any]]:
    """One video (`batch` holds one record: its `index` and `path`) -> its clips' views, in bounded chunks.

    A `DataError` (a corrupt file, a crop that does not fit) ends the video with an error row; the rows already
    yielded are dropped by the driver.
    """
    import torch

    from c3dnet.data.decode import set_decode_threads
    from c3dnet.data.sources import VideoRecord
    from c3dnet.features.decoders import VideoMeta
    from c3dnet.inference.clips import clip_frames

    torch.set_num_threads(1)
    set_decode_threads(1)  # decode tasks share the cores out, as decoder processes do
    index, path = int(batch["index"][0]), str(batch["path"][0])
    clip_shape = (preprocess.clip_len, preprocess.crop_size, preprocess.crop_size, 3)
    per_chunk = clips_per_chunk(clip_shape)
    recipe = options.recipe
    views: list[int] = []
    chunk = np.empty((per_chunk, *clip_shape), dtype=np.uint8)
    meta_bytes = b""
    try:
        meta = VideoMeta.of(VideoRecord(Path(path), -1), preprocess, options)
        meta_bytes = pickle.dumps(meta)
        for k, frames in clip_frames(path, preprocess, recipe.stride, meta.num_frames, meta.size_hw, options.chunk,
                                     options.autorotate, meta.plan.indices, recipe.crop_set):
            np.stack(frames, out=chunk[len(views)])
            views.append(k)
            if len(views) == per_chunk:
                yield _rows(index, views, chunk.copy(), meta_bytes if views[0] == 0 else b"")
                views = []
        if views:
            yield _rows(index, views, chunk[:len(views)].copy(), meta_bytes if views[0] == 0 else b"")
    except DataError as e:
        yield _rows(index, [-1], np.zeros((1, *clip_shape), dtype=np.uint8), error=str(e))


@dataclass(frozen=True)
class ModelSpec:
    """How an actor gets its model: `weights` (a path every node sees, or a loaded model, shipped pickled) and
    `load_backend`'s settings."""

    weights: Any
    layer: str
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True


class ClipActor:
    """One model replica: batches of clip rows in, feature rows out, each batch padded to `batch_size` rows.

    Args:
        spec: the model and the output to compute.
        batch_size: the model's batch, fixed (the plain extraction's `Batcher` size): the kernels, and so the last
            float bits of every row, are those of a plain `c3d extract` with the same batch size.
        device: "cuda" on an actor given a GPU, "cpu" otherwise.
        threads: intra-op threads on the CPU (the CPUs the actor was given, rounded up).
    """

    def __init__(self, spec: ModelSpec, batch_size: int, device: str, threads: int) -> None:
        from c3dnet.inference.backends import load_backend
        from c3dnet.inference.runner import ClipRunner

        self.threads = max(1, threads) if device == "cpu" else 0
        self.runner = ClipRunner(load_backend(spec.weights, device, spec.precision, spec.compile, progress=False,
                                              channels_last=spec.channels_last), spec.layer)
        self.batch_size = batch_size
        self.staging: np.ndarray | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        if self.threads and torch.get_num_threads() != self.threads:
            # Here, not in __init__: Ray Data calls this on a thread of its own, and OpenMP's thread count is
            # that of the calling thread (set in __init__, the model ran on one thread: 0.57x a plain run's speed).
            torch.set_num_threads(self.threads)
        clips = batch["clip"]  # (n, T, crop, crop, 3)
        live = np.flatnonzero(batch["view"] >= 0)  # error rows carry no clip
        rows = np.zeros((len(clips), self.runner.dim), dtype=np.float32)
        if self.staging is None:
            self.staging = np.empty((self.batch_size, *clips.shape[1:]), dtype=np.uint8)
        for lo in range(0, len(live), self.batch_size):
            take = live[lo:lo + self.batch_size]
            self.staging[:len(take)] = clips[take]
            self.staging[len(take):] = self.staging[0]  # padded as the Batcher pads: one batch shape
            # (B, T, H, W, 3) viewed as (B, 3, T, H, W): channels_last_3d, as a plain extraction feeds the model
            out = self.runner(torch.from_numpy(self.staging).permute(0, 4, 1, 2, 3))
            rows[take] = out[:len(take)]
        return {**{c: batch[c] for c in ROW_COLUMNS}, "row": rows}
