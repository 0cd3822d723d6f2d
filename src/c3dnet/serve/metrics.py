"""Prometheus metrics of one server (its own registry, so two servers in one process do not mix)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServeMetrics:
    """Requests, errors, latencies, batch sizes, queue depth and cancellations of a `c3d serve`."""

    def __init__(self, max_batch: int) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("c3d_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter("c3d_request_errors", "requests answered with a 4xx or 5xx status, by endpoint and "
                              "status code", ["endpoint", "code"], registry=r)
        self.latency = Histogram("c3d_request_seconds", "time from a request's arrival to its answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        buckets = sorted({1, *(2**i for i in range(max_batch.bit_length() + 1) if 2**i <= max_batch), max_batch})
        self.batch_size = Histogram("c3d_batch_size", "clips per forward pass", buckets=[float(b) for b in buckets],
                                    registry=r)
        self.batch_requests = Histogram("c3d_batch_requests", "requests whose clips share a forward pass",
                                        buckets=[float(b) for b in buckets], registry=r)
        self.batch_seconds = Histogram("c3d_batch_seconds", "seconds per forward pass", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.clips_decoded = Counter("c3d_clips_decoded", "clips decoded for requests (queued for the model)",
                                     registry=r)
        self.cancelled = Counter("c3d_requests_cancelled", "requests stopped before their answer, by reason "
                                 "(disconnect, timeout)", ["reason"], registry=r)
        self.rejected = Counter("c3d_requests_rejected", "requests refused with 503 because the server was full",
                                registry=r)
        self.queue_clips = Gauge("c3d_queue_clips", "clips waiting for the model", registry=r)
        self.in_progress = Gauge("c3d_requests_in_progress", "admitted requests not yet finished (uploading, "
                                 "decoding or waiting for the model)", registry=r)

    def watch(self, queued: Callable[[], float], in_progress: Callable[[], float]) -> None:
        self.queue_clips.set_function(queued)
        self.in_progress.set_function(in_progress)

    def on_batch(self, size: int, requests: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)

    def answered(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
