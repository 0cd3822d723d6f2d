"""`Service`: what a server's endpoints share (the model thread, the decoding pool and its fair slots, the upload
folder, the metrics), and `Service.run`, the one path every upload request takes: admission, the upload within its
deadline and pace limits, the work in the pool under a `RequestGuard`, the answer or the error it became.

A request is admitted only while fewer than `max_pending` requests are in progress and the clip queue has room
(else 503 with Retry-After). Each request has a deadline (`request_timeout_s`, 504 past it), and a watcher sets its
cancel event when the client disconnects: its decoding stops within a frame and its slot is freed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from starlette.requests import ClientDisconnect, Request

from c3dnet.inference.backends import Backend
from c3dnet.inference.prediction import class_labels
from c3dnet.log import get_logger
from c3dnet.serve.batcher import Cancelled, DynamicBatcher
from c3dnet.serve.config import ServeConfig
from c3dnet.serve.fairness import FairSlots, RequestGuard
from c3dnet.serve.jobs import Job
from c3dnet.serve.metrics import ServeMetrics
from c3dnet.serve.uploads import RequestError, Upload, paced, receive_upload

log = get_logger(__name__)


class Service:
    """The model thread, the decoding pool and slots, the upload folder and the counters of one server."""

    def __init__(self, backend: Backend, config: ServeConfig) -> None:
        self.backend, self.config = backend, config
        self.class_names = class_labels(backend.class_names, backend.num_classes)
        self.limits = config.limits
        self.metrics = ServeMetrics(config.max_batch)
        self.slots = FairSlots(config.decode_workers)
        self.batcher: DynamicBatcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.folder: Path | None = None
        self.pending = 0
        self.lock = threading.Lock()
        self.cancels: set[threading.Event] = set()
        self.ready = threading.Event()
        self.metrics.watch(lambda: self.batcher.queued if self.batcher else 0, lambda: self.pending)

    def start(self) -> None:
        c = self.config
        self.folder = Path(tempfile.mkdtemp(prefix="c3d-serve-"))  # mode 0700: private to this user
        # a thread per admitted request: those past the decoding slots wait for their turn (`FairSlots`)
        self.pool = ThreadPoolExecutor(c.max_pending, thread_name_prefix="c3d-decode")
        self.batcher = DynamicBatcher(self.backend, max_batch=c.max_batch, max_queue=c.max_queue,
                                      max_wait_s=c.max_wait_ms / 1000, on_batch=self.metrics.on_batch)
        threading.Thread(target=self._warm_up, name="c3d-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        """One forward pass before /readyz says yes (first-call allocations, ONNX Runtime's set-up)."""
        pre = self.batcher.runner("logits").preprocess
        try:
            self.batcher.submit(torch.zeros((1, 3, pre.clip_len, pre.crop_size, pre.crop_size), dtype=torch.uint8),
                                "logits")
        except Cancelled:
            return
        self.ready.set()
        log.info("model ready")

    def stop(self) -> None:
        with self.lock:
            for cancel in self.cancels:
                cancel.set()
        if self.batcher is not None:
            self.batcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def admit(self) -> threading.Event:
        """Count a new request in (its cancel event), or refuse it (503) while full or not ready."""
        if not self.ready.is_set():
            raise RequestError(503, "the model is still loading; try again in a few seconds", {"Retry-After": "2"})
        with self.lock:
            if self.pending >= self.config.max_pending or self.batcher.saturated:
                self.metrics.rejected.inc()
                raise RequestError(503, f"the server is busy ({self.pending} requests in progress, "
                                        f"{self.batcher.queued} clips queued); retry after the number of seconds "
                                        "in the Retry-After header",
                                   {"Retry-After": str(self.batcher.retry_after())})
            self.pending += 1
            cancel = threading.Event()
            self.cancels.add(cancel)
            return cancel

    def release(self, cancel: threading.Event) -> None:
        with self.lock:
            self.pending -= 1
            self.cancels.discard(cancel)

    def model_info(self) -> dict[str, Any]:
        b = self.backend
        return {
            "architecture": "C3D",
            **b.describe(),
            "config": b.config.to_dict(),
            "num_classes": b.num_classes,
            "class_names": self.class_names,
            "preprocess": b.preprocess.to_dict(),
            "outputs": {"logits": b.num_classes, **b.feature_dims},
            "serving": self.config.to_dict(),
        }

    # ----------------------------------------------------------------------------------------------- requests

    async def receive(self, request: Request, deadline: float, endpoint: str) -> Upload:
        """The request's upload, within the deadline and the pace limits; only the form field `file`."""
        c = self.config
        body = paced(request.stream(), c.min_upload_kbps * 1000, c.header_timeout_s)
        try:
            upload = await asyncio.wait_for(
                receive_upload(request.headers.get("content-type"), request.headers.get("content-length"), body,
                               self.folder, int(c.max_upload_mb * 2**20)), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise RequestError(408, f"the upload did not arrive within {c.request_timeout_s:g} s "
                                    "(--request-timeout)") from None
        except ClientDisconnect:  # mid-upload: `receive_upload` has removed the part received
            self.metrics.cancelled.labels("disconnect").inc()
            raise RequestError(499, "the client went away during the upload") from None
        if upload.fields:
            upload.remove()
            raise RequestError(400, f"unexpected form fields {sorted(upload.fields)}: send only `file` in the form "
                                    f"and options in the query string, e.g. /v1/{endpoint}?stride=8")
        return upload

    async def run(self, request: Request, endpoint: str, work: Callable[..., Any], *args: Any) -> Any:
        """Admit, receive, and run `work(job, *args)` in the pool within the deadline; returns its result."""
        deadline = time.monotonic() + self.config.request_timeout_s
        cancel = self.admit()
        handed_over = False
        try:
            upload = await self.receive(request, deadline, endpoint)
            watcher = asyncio.create_task(_watch_disconnect(request, cancel))
            try:
                future = asyncio.get_running_loop().run_in_executor(self.pool, self._job, upload, cancel, work,
                                                                    *args)
                handed_over = True
                return await self._answer(future, cancel, upload, deadline)
            finally:
                watcher.cancel()
        finally:
            if not handed_over:
                self.release(cancel)

    async def _answer(self, future: asyncio.Future, cancel: threading.Event, upload: Upload, deadline: float) -> Any:
        timeout = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            cancel.set()
            self.metrics.cancelled.labels("timeout").inc()
            raise RequestError(504, f"{upload.name}: not done within this server's limit of {timeout:g} s per "
                                    "request (--request-timeout); send a shorter video") from None
        except Cancelled:
            if cancel.is_set():
                self.metrics.cancelled.labels("disconnect").inc()
            raise RequestError(499, "the client went away; the request was cancelled") from None

    def _job(self, upload: Upload, cancel: threading.Event, work: Callable[..., Any], *args: Any) -> Any:
        """The pool's side of a request: its work under a guard (a decoding slot, cancellation, the CPU budget);
        the upload is always removed and the request counted out."""
        try:
            if cancel.is_set():
                raise Cancelled("the request was cancelled before its turn")
            with RequestGuard(self.slots, cancel, self.config.max_cpu_s, upload.name) as guard:
                job = Job(self.batcher, upload, self.limits, guard, self.metrics.clips_decoded.inc)
                return work(job, *args)
        finally:
            upload.remove()
            self.release(cancel)


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body is read: the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return
