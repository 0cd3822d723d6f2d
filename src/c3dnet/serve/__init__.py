"""`c3d serve`: classifying uploaded videos over HTTP, with dynamic batching, and a web page to look at them.

Modules: `app` (the FastAPI endpoints and their admission, deadlines and cancellation), `batcher` (the model
thread that batches concurrent requests' clips), `jobs` (checking an upload and cutting its clips, as `c3d predict`
and `c3d extract` do), `uploads` (streamed multipart uploads into a private folder), `metrics` (Prometheus),
`static/index.html` (the page).

Example:
    >>> import uvicorn                                                         # doctest: +SKIP
    >>> from c3dnet.serve import ServeConfig, create_app
    >>> from c3dnet.weights import load_model
    >>> app = create_app(load_model("c3d_ucf101.safetensors"), "cuda", ServeConfig(max_batch=64))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP
"""

from c3dnet.serve.app import create_app
from c3dnet.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
