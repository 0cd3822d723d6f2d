"""The HTTP service: FastAPI endpoints over the decoding pool and the model thread.

A request is admitted only while fewer than `max_pending` requests are in progress and the clip queue has room
(else 503 with Retry-After). Its upload is streamed to the server's private folder (`uploads`), its work runs in
the decoding pool (`jobs`), and its clips are batched with other requests' (`batcher`). Each request has a
deadline (`request_timeout_s`, 504 past it), and a watcher sets its cancel event when the client disconnects, so
its decoding stops. Errors are JSON: {"error": "<what went wrong and what to do>"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from c3dnet.data.timing import parse_fps
from c3dnet.errors import ConfigError
from c3dnet.features.pooling import check_pooling, l2_mode
from c3dnet.log import get_logger
from c3dnet.prediction import class_labels
from c3dnet.serve.batcher import Cancelled, DynamicBatcher
from c3dnet.serve.jobs import FeatureOptions, Limits, PredictOptions, features_job, predict_job
from c3dnet.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from c3dnet.serve.uploads import RequestError, Upload, receive_upload

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
NPY_TYPES = ("application/x-npy", "application/octet-stream")
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
            "media-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of a server (the `c3d serve` flags).

    Attributes:
        max_batch: most clips per forward pass.
        max_queue: most clips waiting for the model; new requests get 503 while it is full.
        max_pending: most requests in progress at once (uploading, decoding, waiting); more get 503.
        max_upload_mb: largest upload.
        max_duration_s: longest video, in seconds.
        request_timeout_s: longest time one request may take, upload included (504 past it).
        decode_workers: threads decoding uploads.
        max_wait_ms: how long the model thread waits to fill a batch.
        amp: bf16 autocast on CUDA.
        autorotate: turn frames as the video's display matrix says.
    """

    max_batch: int = 64
    max_queue: int = 256
    max_pending: int = 32
    max_upload_mb: float = 200.0
    max_duration_s: float = 600.0
    request_timeout_s: float = 300.0
    decode_workers: int = 4
    max_wait_ms: float = 5.0
    amp: bool = True
    autorotate: bool = True


class Service:
    """What the endpoints share: the model thread, the decoding pool, the upload folder, counters."""

    def __init__(self, model: C3D | OnnxC3D, device: torch.device | str, config: ServeConfig, source: str) -> None:
        self.model, self.device, self.config, self.source = model, device, config, source
        self.class_names = class_labels(model.class_names, model.num_classes)
        self.limits = Limits(config.max_duration_s, config.autorotate)
        self.metrics = ServeMetrics(config.max_batch)
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
        self.pool = ThreadPoolExecutor(c.decode_workers, thread_name_prefix="c3d-decode")
        self.batcher = DynamicBatcher(self.model, self.device, c.max_batch, c.max_queue, c.max_wait_ms / 1000,
                                      c.amp, on_batch=self.metrics.on_batch)
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

    def admit(self) -> None:
        """Count a new request in, or refuse it (503) while the server is full or not ready."""
        if not self.ready.is_set():
            raise RequestError(503, "the model is still loading; try again in a few seconds",
                               {"Retry-After": "2"})
        with self.lock:
            if self.pending >= self.config.max_pending or self.batcher.saturated:
                self.metrics.rejected.inc()
                raise RequestError(503, f"the server is busy ({self.pending} requests in progress, "
                                        f"{self.batcher.queued} clips queued); retry after the number of seconds "
                                        "in the Retry-After header",
                                   {"Retry-After": str(self.batcher.retry_after())})
            self.pending += 1

    def release(self) -> None:
        with self.lock:
            self.pending -= 1

    def model_info(self) -> dict[str, Any]:
        model, pre = self.model, self.model.preprocess
        onnx = not isinstance(model, torch.nn.Module)
        return {
            "architecture": "C3D",
            "runtime": "onnxruntime" if onnx else "pytorch",
            "device": "cpu" if onnx else str(self.device),
            "weights": self.source,
            "config": model.config.to_dict(),
            "num_classes": model.num_classes,
            "class_names": self.class_names,
            "preprocess": pre.to_dict(),
            "outputs": {"logits": model.num_classes, **model.feature_dims},
            "serving": asdict(self.config),
        }


def _fps(text: str | None) -> Fraction | None:
    if not text:
        return None
    try:
        return parse_fps(text, "fps")
    except ConfigError as e:
        raise RequestError(422, str(e)) from None


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body is read: the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _job(service: Service, upload: Upload, cancel: threading.Event, work, *args):  # -> the work's result
    """The pool's side of a request: run it unless it was already cancelled; the upload is always removed."""
    try:
        if cancel.is_set():
            raise Cancelled("the request was cancelled before its turn")
        return work(service.batcher, upload, *args, service.limits, cancel, service.metrics.clips_decoded.inc)
    finally:
        upload.remove()
        service.release()
        with service.lock:
            service.cancels.discard(cancel)


async def run_request(service: Service, request: Request, endpoint: str, work, *args) -> Any:
    """Admit, receive, run `work(batcher, upload, *args, limits, cancel, on_clips)` in the pool, within the
    deadline; returns its result."""
    arrived = time.perf_counter()
    service.admit()
    cancel = threading.Event()
    with service.lock:
        service.cancels.add(cancel)
    timeout = service.config.request_timeout_s
    submitted = False
    watcher = None
    try:
        upload = await asyncio.wait_for(
            receive_upload(request.headers.get("content-type"), request.headers.get("content-length"),
                           request.stream(), service.folder, int(service.config.max_upload_mb * 2**20)),
            timeout)
        if upload.fields:
            upload.remove()
            raise RequestError(400, f"unexpected form fields {sorted(upload.fields)}: send only `file` in the form "
                                    f"and options in the query string, e.g. /v1/{endpoint}?stride=8")
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        future = asyncio.get_running_loop().run_in_executor(service.pool, _job, service, upload, cancel, work,
                                                            *args)
        submitted = True
        left = timeout - (time.perf_counter() - arrived)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(left, 0.001))
        except asyncio.TimeoutError:
            cancel.set()
            service.metrics.cancelled.labels("timeout").inc()
            raise RequestError(504, f"{upload.name}: not done within this server's limit of {timeout:g} s per "
                                    "request (--request-timeout); send a shorter video") from None
        except Cancelled:
            if cancel.is_set():
                service.metrics.cancelled.labels("disconnect").inc()
            raise RequestError(499, "the client went away; the request was cancelled") from None
    except asyncio.TimeoutError:
        raise RequestError(408, f"the upload did not arrive within {timeout:g} s (--request-timeout)") from None
    except ClientDisconnect:  # mid-upload: `receive_upload` has removed the part received
        service.metrics.cancelled.labels("disconnect").inc()
        raise RequestError(499, "the client went away during the upload") from None
    finally:
        if watcher is not None:
            watcher.cancel()
        if not submitted:
            service.release()
            with service.lock:
                service.cancels.discard(cancel)


UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the video"}}}}}}}


def create_app(model: C3D | OnnxC3D, device: torch.device | str = "cpu", config: ServeConfig | None = None,
               source: str = "") -> FastAPI:
    """The FastAPI application serving `model` (a `C3D` on `device`, or an `OnnxC3D`).

    The model thread and the decoding pool start with the application's lifespan and stop with it; the upload
    folder is removed at shutdown.
    """
    from c3dnet.version import __version__

    service = Service(model, device, config or ServeConfig(), source)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="c3dnet", version=__version__, lifespan=lifespan,
                  description="C3D video classification and feature extraction. Upload a video as the multipart "
                              "field `file`; options go in the query string.")
    app.state.service = service
    page = (STATIC / "index.html").read_bytes()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for item in e.errors():
            where = ".".join(str(p) for p in item.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {item.get('msg', 'invalid')}" +
                         (f" (got {item['input']!r})" if "input" in item and item["input"] is not None else ""))
        return error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(e).__name__}); the server log has the details")

    async def answered(endpoint: str, request: Request, make) -> Response:
        """Run `make()` and count its answer (or error) in the metrics."""
        arrived = time.perf_counter()
        try:
            response = await make()
        except RequestError as e:
            service.metrics.answered(endpoint, e.status, time.perf_counter() - arrived)
            return error(e.status, e.message, e.headers)
        except Exception as e:
            service.metrics.answered(endpoint, 500, time.perf_counter() - arrived)
            log.exception("%s failed", endpoint)
            return error(500, f"internal error ({type(e).__name__}); the server log has the details")
        service.metrics.answered(endpoint, response.status_code, time.perf_counter() - arrived)
        return response

    @app.post("/v1/predict", openapi_extra=UPLOAD_BODY, summary="classify a video: top-k and per-clip timeline")
    async def v1_predict(
        request: Request,
        top_k: Annotated[int, Query(ge=1, le=1000, description="classes per record")] = 5,
        clips: Annotated[int, Query(ge=1, le=100, description="evenly spaced clips averaged")] = 10,
        average: Annotated[Literal["score", "prob"], Query(description="softmax of mean logits, or mean probs")]
        = "score",
        stride: Annotated[int, Query(ge=1, le=10000, description="frames between timeline clips")] = 16,
        fps: Annotated[str | None, Query(description="sample the video at this frame rate first (30, 29.97, "
                                                     "30000/1001), as `c3d predict --fps`")] = None,
        thumbnails: Annotated[int, Query(ge=0, le=64, description="JPEG thumbnails for pages that cannot play "
                                                                  "the video")] = 0,
    ) -> Response:
        """The record `c3d predict --json` prints for the video, plus its `timeline` (as `--timeline` writes it,
        with clip end times) and, if asked, `thumbnails`."""
        options = PredictOptions(top_k, clips, average, stride, _fps(fps), thumbnails)

        async def make() -> Response:
            record = await run_request(service, request, "predict", predict_job, options, service.class_names)
            return JSONResponse(record)

        return await answered("predict", request, make)

    @app.post("/v1/features", openapi_extra=UPLOAD_BODY, summary="C3D features of a video, as `c3d extract`")
    async def v1_features(
        request: Request,
        layer: Annotated[Literal["fc6", "fc7", "pool5"], Query(description="feature layer")] = "fc6",
        stride: Annotated[int, Query(ge=1, le=10000, description="frames between clip starts")] = 16,
        fps: Annotated[str | None, Query(description="sample the video at this frame rate first")] = None,
        video_mean: Annotated[bool, Query(description="the mean over the clips (dim,)")] = False,
        segments: Annotated[int, Query(ge=0, le=100000, description="pool the clips into this many segments")] = 0,
        segment_rule: Annotated[Literal["uniform", "sultani"], Query(description="segment boundaries")] = "uniform",
        l2: Annotated[Literal["none", "clip", "output"] | None,
                      Query(description="L2 normalisation: none, clip (before pooling), output (each row); "
                                        "default: output with segments, else none")] = None,
    ) -> Response:
        """The rows `c3d extract` writes for the video: JSON, or `.npy` bytes when the Accept header asks for
        application/x-npy."""
        l2 = l2_mode(l2, segments)
        try:
            check_pooling(segments, segment_rule, l2, video_mean)
        except ConfigError as e:
            raise RequestError(422, str(e).replace("--", "").replace("-", "_")) from None
        options = FeatureOptions(layer, stride, _fps(fps), video_mean, segments, segment_rule, l2)
        accept = request.headers.get("accept", "")

        async def make() -> Response:
            features = await run_request(service, request, "features", features_job, options)
            if any(t in accept for t in NPY_TYPES):
                buffer = io.BytesIO()
                np.save(buffer, features.rows, allow_pickle=False)
                return Response(buffer.getvalue(), media_type="application/x-npy", headers={
                    "Content-Disposition": 'attachment; filename="features.npy"',
                    "X-C3D-Shape": ",".join(str(n) for n in features.rows.shape)})
            return JSONResponse(features.to_dict())

        return await answered("features", request, make)

    @app.get("/v1/model", summary="architecture, class names, preprocessing and weights source")
    async def v1_model() -> dict[str, Any]:
        return service.model_info()

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: the model is loaded and has run once")
    async def readyz() -> Response:
        if service.ready.is_set():
            return JSONResponse({"status": "ready"})
        return error(503, "the model is still loading", {"Retry-After": "2"})

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-cache"})

    return app
