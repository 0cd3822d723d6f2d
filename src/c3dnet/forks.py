"""The processes c3dnet forks (DataLoader workers, `c3d extract`'s decoder processes, `c3d prepare`'s pool), and
what they must not do with what they inherit.

A child made by `fork` has a copy of the parent's objects but only the thread that forked. Two things hung here:

- **Garbage the parent made.** Python's cyclic collector, run in the child, would free the parent's unreachable
  cycles there and call their destructors: an ONNX Runtime session's destructor joins its thread pool, whose
  threads exist only in the parent, and the child waits forever (a decoder process hung this way after
  `c3d extract --onnx` ran in the same process). So everything the parent holds is frozen out of the collector
  just before the fork (`gc.freeze`, as the `gc` documentation advises for forking servers) and thawed in the
  parent right after: the parent frees its own garbage, a child only what it made.
- **OpenCV's thread pool.** It does not survive `fork`: a child forked while the pool's threads exist can hang in
  its first `cv2.resize`. It is stopped before the fork (`data.resize.one_opencv_thread`).

Both apply only to the children c3dnet makes, through `FORK` (a fork context whose processes start inside
`children()`): a program that imports c3dnet and forks its own processes is left alone. What stays process-wide,
and why: OpenCV runs on one thread once c3dnet has resized a frame (`data.resize.opencv`): its resizes are small,
and c3dnet's loader processes already use every core.

Example:
    >>> loader = DataLoader(dataset, num_workers=4, multiprocessing_context=FORK)     # doctest: +SKIP
    >>> with FORK.Pool(4) as pool: ...                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from multiprocessing.context import ForkContext, ForkProcess

from c3dnet.data.resize import one_opencv_thread

_lock = threading.Lock()  # freezing and thawing are process-wide: one fork at a time


@contextlib.contextmanager
def children() -> Iterator[None]:
    """Around a `fork`: the parent's objects frozen out of the collector (the child inherits them frozen), and
    OpenCV's pool stopped; the parent's objects thawed again afterwards."""
    with _lock:
        one_opencv_thread()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()


class C3DForkProcess(ForkProcess):
    """A forked process started inside `children()`."""

    def start(self) -> None:
        with children():
            super().start()


class C3DForkContext(ForkContext):
    """multiprocessing's fork context, whose processes (and pools' workers) start inside `children()`."""

    Process = C3DForkProcess


FORK = C3DForkContext()
"""The context for every process c3dnet forks: DataLoader(multiprocessing_context=FORK), FORK.Pool(n)."""


def loader_context(workers: int) -> C3DForkContext | None:
    """The `multiprocessing_context` of a DataLoader with `workers` processes: `FORK` where forking is the
    platform's default (Linux), else None (the platform's own, e.g. spawn on macOS, where none of this applies)."""
    import multiprocessing

    return FORK if workers > 0 and multiprocessing.get_start_method(allow_none=True) in (None, "fork") \
        and "fork" in multiprocessing.get_all_start_methods() else None
