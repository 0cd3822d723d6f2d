"""`c3d serve --weights W`: an HTTP service (and a web page) classifying uploaded videos, with dynamic batching.

    c3d serve --weights W [--host 127.0.0.1] [--port 8000] [--device auto] [--max-batch N] [--max-upload-mb 200]
              [--max-duration 600] [--request-timeout 300] [--api-key-file F] [--allowed-hosts NAME,...]

Binds to 127.0.0.1 unless told otherwise: --host 0.0.0.0 exposes it to every network the machine is on.
"""

from __future__ import annotations

import argparse

from c3dnet.commands.common import add_precision_arguments

HELP = "serve the model over HTTP: /v1/predict, /v1/features, a web page at /, Prometheus /metrics"

CPU_MAX_BATCH = 4
"""--max-batch on the CPU: the reference C3D's first layers take about 50 MB per clip, and a CPU gains little
from larger batches."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weight file (any format `c3d` loads), or an OpenVINO folder from "
                                         "`c3d quantize`")
    source.add_argument("--onnx", help="run an ONNX file from `c3d export` with ONNX Runtime instead")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                             "server to every network: set --api-key-file or put it behind a reverse proxy)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    add_precision_arguments(parser)
    parser.add_argument("--max-batch", type=int, default=None,
                        help=f"most clips per forward pass (default: 64 on a GPU, {CPU_MAX_BATCH} on the CPU)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="most clips waiting for the model; new requests get 503 while it is full (default: 256)")
    parser.add_argument("--max-pending", type=int, default=32,
                        help="most requests in progress at once; more get 503 with Retry-After (default: 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the model waits for more clips to fill a batch (default: 5)")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload in MB (default: 200)")
    parser.add_argument("--max-duration", type=float, default=600.0,
                        help="longest video accepted, in seconds, checked before decoding (default: 600)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="longest time one request may take, upload included, in seconds (default: 300)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="requests decoding at once; more take turns with them (default: CPU cores, at most 8)")
    _limit_arguments(parser)
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix says")
    parser.add_argument("--no-progress", action="store_true",
                        help="no access log (one line per request); errors are still logged")


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    limits = parser.add_argument_group("limits checked before work, and access")
    limits.add_argument("--max-pixels", type=float, default=4096 * 2304,
                        help="most pixels in a frame, from the stream header (default: 4096x2304)")
    limits.add_argument("--max-aspect", type=float, default=4.0,
                        help="most width/height (or height/width) of a frame (default: 4)")
    limits.add_argument("--max-cpu-seconds", dest="max_cpu_s", type=float, default=120.0,
                        help="most CPU seconds one request's decoding may take (default: 120)")
    limits.add_argument("--max-response-mb", type=float, default=128.0,
                        help="largest answer (features, timeline), estimated before decoding (default: 128)")
    limits.add_argument("--min-upload-kbps", type=float, default=16.0,
                        help="slowest upload accepted, in kB/s after the first --header-timeout seconds "
                             "(default: 16)")
    limits.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has for its request headers, and for each piece of its upload "
                             "(default: 10)")
    limits.add_argument("--allowed-hosts", default="",
                        help="comma-separated host names the server answers for (the Host header; IP addresses "
                             "always pass; * for any). Default: localhost and --host")
    limits.add_argument("--api-key-file", help="a file holding the key every /v1 request and /metrics must carry "
                                               "(Authorization: Bearer KEY); also $C3DNET_API_KEY")
    limits.add_argument("--cors-origin", dest="cors_origins", action="append", default=[],
                        help="an origin whose pages may call the API from a browser (repeatable; default: none)")


def _api_key(args: argparse.Namespace) -> str | None:
    import os

    from c3dnet.errors import ConfigError

    if args.api_key_file:
        try:
            key = open(args.api_key_file, encoding="utf-8").read().strip()
        except OSError as e:
            raise ConfigError(f"{args.api_key_file}: cannot read the API key file ({e.strerror or e})") from None
        if not key:
            raise ConfigError(f"{args.api_key_file}: the API key file is empty")
        return key
    return os.environ.get("C3DNET_API_KEY") or None


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from c3dnet.errors import ConfigError

    try:
        import uvicorn

        from c3dnet.serve import ServeConfig, create_app
        from c3dnet.serve.protocol import protocol_with_header_timeout
    except ImportError as e:
        raise ConfigError(f"c3d serve needs the serving extra ({e.name} is missing): "
                          "pip install 'c3dnet[serve]'") from None
    from c3dnet.device import select_device
    from c3dnet.inference.backends import load_backend

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    on_gpu = not args.onnx and not os.path.isdir(args.weights) and select_device(args.device, 0).type == "cuda"
    workers = args.decode_workers if args.decode_workers is not None else max(1, min(8, os.cpu_count() or 1))
    config = ServeConfig(
        max_batch=args.max_batch if args.max_batch is not None else 64 if on_gpu else CPU_MAX_BATCH,
        max_queue=args.max_queue, max_pending=args.max_pending, max_upload_mb=args.max_upload_mb,
        max_duration_s=args.max_duration, request_timeout_s=args.request_timeout, decode_workers=workers,
        max_wait_ms=args.max_wait_ms, precision=args.precision, autorotate=args.autorotate,
        max_pixels=int(args.max_pixels), max_aspect=args.max_aspect, max_cpu_s=args.max_cpu_s,
        max_response_mb=args.max_response_mb,
        min_upload_kbps=args.min_upload_kbps, header_timeout_s=args.header_timeout,
        allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()), host=args.host,
        api_key=_api_key(args), cors_origins=tuple(args.cors_origins))  # checks every setting (ConfigError)
    backend = load_backend(args.onnx or args.weights, args.device, config.backend_precision, local_rank=0)
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(f"c3d serve: warning: listening on {args.host} without an API key: anyone who can reach this machine "
              "can upload videos and use its compute; set --api-key-file, or put it behind a reverse proxy with "
              "authentication and TLS", file=sys.stderr)
    app = create_app(backend, config=config)
    # Connections past limit_concurrency get uvicorn's own 503 before any work; a connection must send its
    # headers within --header-timeout (slowloris).
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=not args.no_progress,
                                           log_level="info", timeout_graceful_shutdown=5,
                                           limit_concurrency=max(64, 4 * config.max_pending),
                                           http=protocol_with_header_timeout(config.header_timeout_s)))
    server.run()
    return 0
