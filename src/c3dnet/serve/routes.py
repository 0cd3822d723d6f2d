"""The endpoints, as FastAPI routers over the `Service` (a dependency): /v1/predict and /v1/features (uploads),
/v1/model, the health probes, /metrics and the page at /."""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from c3dnet.data.timing import parse_fps
from c3dnet.errors import ConfigError
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.log import get_logger
from c3dnet.serve.jobs import FeatureOptions, PredictOptions, features_job, predict_job
from c3dnet.serve.metrics import CONTENT_TYPE_LATEST
from c3dnet.serve.service import Service
from c3dnet.serve.uploads import RequestError

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
NPY_TYPES = ("application/x-npy", "application/octet-stream")
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
            "media-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the video"}}}}}}}
MAX_SEGMENTS = 10_000


def service(request: Request) -> Service:
    return request.app.state.service


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def only_params(*names: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters an endpoint does not take (a misspelt option would be ignored)."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise RequestError(422, f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                                    f"{', '.join(unknown)}; {request.url.path} takes {', '.join(sorted(allowed))}")
    return check


def _fps(text: str | None) -> Fraction | None:
    if not text:
        return None
    try:
        return parse_fps(text, "fps")
    except ConfigError as e:
        raise RequestError(422, str(e)) from None


async def answered(svc: Service, endpoint: str, make: Callable[[], Awaitable[Response]]) -> Response:
    """Run `make()` and count its answer (or error) in the metrics."""
    arrived = time.perf_counter()
    try:
        response = await make()
    except RequestError as e:
        svc.metrics.answered(endpoint, e.status, time.perf_counter() - arrived)
        return error(e.status, e.message, e.headers)
    except Exception as e:
        svc.metrics.answered(endpoint, 500, time.perf_counter() - arrived)
        log.exception("%s failed", endpoint)
        return error(500, f"internal error ({type(e).__name__}); the server log has the details")
    svc.metrics.answered(endpoint, response.status_code, time.perf_counter() - arrived)
    return response


uploads = APIRouter(prefix="/v1")
PREDICT_PARAMS = ("top_k", "clips", "average", "stride", "fps", "thumbnails")
FEATURE_PARAMS = ("layer", "stride", "fps", "video_mean", "segments", "segment_rule", "l2", "crops", "crop_order",
                  "crop_axis")


@uploads.post("/predict", openapi_extra=UPLOAD_BODY, summary="classify a video: top-k and per-clip timeline",
              dependencies=[Depends(only_params(*PREDICT_PARAMS))])
async def v1_predict(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes per record")] = 5,
    clips: Annotated[int, Query(ge=1, le=100, description="evenly spaced clips averaged")] = 10,
    average: Annotated[Literal["score", "prob"], Query(description="softmax of mean logits, or mean probs")]
    = "score",
    stride: Annotated[int, Query(ge=1, le=10000, description="frames between timeline clips")] = 16,
    fps: Annotated[str | None, Query(description="sample the video at this frame rate first (30, 29.97, "
                                                 "30000/1001), as `c3d predict --fps`")] = None,
    thumbnails: Annotated[int, Query(ge=0, le=64, description="JPEG thumbnails for pages that cannot play the "
                                                              "video")] = 0,
) -> Response:
    """The record `c3d predict --json` prints for the video, plus its `timeline` (as `--timeline` writes it, with
    clip end times) and, if asked, `thumbnails`."""
    options = PredictOptions(top_k, clips, average, stride, _fps(fps), thumbnails)

    async def make() -> Response:
        return JSONResponse(await svc.run(request, "predict", predict_job, options, svc.class_names))

    return await answered(svc, "predict", make)


@uploads.post("/features", openapi_extra=UPLOAD_BODY, summary="C3D features of a video, as `c3d extract`",
              dependencies=[Depends(only_params(*FEATURE_PARAMS))])
async def v1_features(
    request: Request,
    svc: Annotated[Service, Depends(service)],
    layer: Annotated[Literal["fc6", "fc7", "pool5"], Query(description="feature layer")] = "fc6",
    stride: Annotated[int, Query(ge=1, le=10000, description="frames between clip starts")] = 16,
    fps: Annotated[str | None, Query(description="sample the video at this frame rate first")] = None,
    video_mean: Annotated[bool, Query(description="the mean over the clips (dim,)")] = False,
    segments: Annotated[int, Query(ge=0, le=MAX_SEGMENTS, description="pool the clips into this many segments")]
    = 0,
    segment_rule: Annotated[Literal["uniform", "sultani"], Query(description="segment boundaries")] = "uniform",
    l2: Annotated[Literal["none", "clip", "output"] | None,
                  Query(description="L2 normalisation: none, clip (before pooling), output (each row); default: "
                                    "output with segments, else none")] = None,
    crops: Annotated[str, Query(description="center, 5 or 10: torchvision's five or ten crops of each clip, as "
                                            "`c3d extract --crops`")] = "center",
    crop_order: Annotated[str | None, Query(description="with crops: tencrop (default) or urdmu")] = None,
    crop_axis: Annotated[str | None, Query(description="with crops: second, (rows, crops, dim) (default), or first, "
                                                       "(crops, rows, dim)")] = None,
) -> Response:
    """The rows `c3d extract` writes for the video: JSON, or `.npy` bytes when the Accept header asks for
    application/x-npy."""
    try:
        recipe = FeatureRecipe(layer=layer, stride=stride, fps=fps or None, video_mean=video_mean,
                               segments=segments, segment_rule=segment_rule, l2=l2, crops=crops,
                               crop_order=crop_order or None, crop_axis=crop_axis or None)
    except ConfigError as e:
        raise RequestError(422, str(e)) from None
    npy = any(t in request.headers.get("accept", "") for t in NPY_TYPES)
    options = FeatureOptions(recipe, npy)

    async def make() -> Response:
        features = await svc.run(request, "features", features_job, options, svc.backend.feature_dims[layer])
        if not npy:
            return JSONResponse(features.to_dict())
        buffer = io.BytesIO()
        np.save(buffer, features.rows, allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/x-npy", headers={
            "Content-Disposition": 'attachment; filename="features.npy"',
            "X-C3D-Shape": ",".join(str(n) for n in features.rows.shape)})

    return await answered(svc, "features", make)


info = APIRouter()


@info.get("/v1/model", summary="architecture, class names, preprocessing and weights source",
          dependencies=[Depends(only_params())])
async def v1_model(svc: Annotated[Service, Depends(service)]) -> dict[str, Any]:
    return svc.model_info()


@info.get("/healthz", summary="liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@info.get("/readyz", summary="readiness: the model is loaded and has run once")
async def readyz(svc: Annotated[Service, Depends(service)]) -> Response:
    if svc.ready.is_set():
        return JSONResponse({"status": "ready"})
    return error(503, "the model is still loading", {"Retry-After": "2"})


@info.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(svc: Annotated[Service, Depends(service)]) -> Response:
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@functools.cache
def _page() -> bytes:
    return (STATIC / "index.html").read_bytes()


@info.get("/", include_in_schema=False)
async def index() -> Response:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                                        "Cache-Control": "no-cache"})
