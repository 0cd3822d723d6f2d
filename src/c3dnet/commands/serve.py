"""`c3d serve --weights W`: an HTTP service (and a web page) classifying uploaded videos, with dynamic batching.

    c3d serve --weights W [--host 127.0.0.1] [--port 8000] [--device auto] [--max-batch 64] [--max-upload-mb 200]
              [--max-duration 600] [--request-timeout 300]

Binds to 127.0.0.1 unless told otherwise: --host 0.0.0.0 exposes it to every network the machine is on.
"""

from __future__ import annotations

import argparse

HELP = "serve the model over HTTP: /v1/predict, /v1/features, a web page at /, Prometheus /metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="weight file (any format `c3d` loads)")
    source.add_argument("--onnx", help="run an ONNX file from `c3d export` with ONNX Runtime instead")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                             "server to every network: put it behind a reverse proxy with authentication)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--max-batch", type=int, default=64, help="most clips per forward pass (default: 64)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="most clips waiting for the model; new requests get 503 while it is full (default: 256)")
    parser.add_argument("--max-pending", type=int, default=32,
                        help="most requests in progress at once; more get 503 with Retry-After (default: 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the model waits for more clips to fill a batch (default: 5)")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload in MB (default: 200)")
    parser.add_argument("--max-duration", type=float, default=600.0,
                        help="longest video accepted, in seconds (default: 600)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="longest time one request may take, upload included, in seconds (default: 300)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="threads decoding uploads (default: CPU cores, at most 8)")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation instead of turning it as its display matrix says")
    parser.add_argument("--no-progress", action="store_true",
                        help="no access log (one line per request); errors are still logged")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from c3dnet.errors import ConfigError

    try:
        import uvicorn

        from c3dnet.serve import ServeConfig, create_app
    except ImportError as e:
        raise ConfigError(f"c3d serve needs the serving extra ({e.name} is missing): "
                          "pip install 'c3dnet[serve]'") from None
    from c3dnet.engine.device import configure_for, select_device

    for name in ("max_batch", "max_queue", "max_pending", "decode_workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("max_upload_mb", "max_duration", "request_timeout"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_queue < args.max_batch:
        raise ConfigError(f"--max-queue ({args.max_queue}) must hold at least one batch (--max-batch "
                          f"{args.max_batch})")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.onnx:
        from c3dnet.export import OnnxC3D

        model, device, source = OnnxC3D(args.onnx), "cpu", args.onnx
    else:
        from c3dnet.weights import load_model

        model, device, source = load_model(args.weights), configure_for(select_device(args.device, 0)), args.weights
    config = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, max_pending=args.max_pending,
                         max_upload_mb=args.max_upload_mb, max_duration_s=args.max_duration,
                         request_timeout_s=args.request_timeout,
                         decode_workers=args.decode_workers or max(1, min(8, os.cpu_count() or 1)),
                         max_wait_ms=args.max_wait_ms, amp=not args.fp32, autorotate=args.autorotate)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"c3d serve: warning: listening on {args.host}: anyone who can reach this machine can upload videos "
              "and use its compute; put it behind a reverse proxy with authentication and TLS", file=sys.stderr)
    app = create_app(model, device, config, str(source))
    # Connections past limit_concurrency get uvicorn's own 503 before any work: a flood of idle connections
    # cannot pile up behind the admission limit.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=not args.no_progress,
                                           log_level="info", timeout_graceful_shutdown=5,
                                           limit_concurrency=max(64, 4 * config.max_pending)))
    server.run()
    return 0
