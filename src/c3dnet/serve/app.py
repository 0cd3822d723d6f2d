"""The FastAPI application: the routers (`c3dnet.serve.routes`) over one `Service`, behind the access checks
(`c3dnet.serve.security`), with every error answered as JSON: {"error": "<what went wrong and what to do>"}.

`create_app(model, device, ServeConfig(...))` is what `c3d serve` runs; called from Python it gets the same
checks of its settings (`ServeConfig` validates itself) and the same protection.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from c3dnet.inference.backends import Backend, as_backend
from c3dnet.log import get_logger
from c3dnet.serve.config import ServeConfig
from c3dnet.serve.routes import error, info, uploads
from c3dnet.serve.security import AccessGuard
from c3dnet.serve.service import Service
from c3dnet.serve.uploads import RequestError

if TYPE_CHECKING:
    from c3dnet.export import OnnxC3D
    from c3dnet.model import C3D

log = get_logger(__name__)

__all__ = ["ServeConfig", "create_app"]


def create_app(model: Backend | C3D | OnnxC3D, device: torch.device | str = "cpu",
               config: ServeConfig | None = None, source: str = "") -> FastAPI:
    """The FastAPI application serving `model`: a backend (`inference.backends.load_backend`), or a `C3D` (run on
    `device`) or an `OnnxC3D` (`source` names its weights in /v1/model).

    The model thread and the decoding pool start with the application's lifespan and stop with it; the upload
    folder is removed at shutdown.
    """
    from c3dnet.version import __version__

    config = config or ServeConfig()
    service = Service(as_backend(model, device, config.backend_precision, source=source), config)

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
    app.include_router(uploads)
    app.include_router(info)
    _error_handlers(app)
    app.add_middleware(AccessGuard, config=config)
    if config.cors_origins:  # outermost: answers preflights for the allowed origins
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Accept"], expose_headers=["X-C3D-Shape"])
    return app


def _error_handlers(app: FastAPI) -> None:
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
