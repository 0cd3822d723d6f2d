"""`ServeConfig`: a server's limits, batching and access rules, checked when it is made.

`c3d serve` builds one from its flags; `create_app(model, device, ServeConfig(...))` from Python gets the same
checks, with the same messages (they name the flags).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from c3dnet.data.records import FrameLimits
from c3dnet.errors import ConfigError
from c3dnet.serve.jobs import Limits

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of a server (the `c3d serve` flags).

    Attributes:
        max_batch: most clips per forward pass.
        max_queue: most clips waiting for the model; new requests get 503 while it is full.
        max_pending: most requests in progress at once (uploading, decoding, waiting); more get 503.
        max_upload_mb: largest upload.
        max_duration_s: longest video, in seconds (checked from its packets before it is decoded).
        request_timeout_s: longest time one request may take, upload included (504 past it).
        decode_workers: requests decoding at once; more take turns with them (time slices).
        max_wait_ms: how long the model thread waits to fill a batch.
        amp: bf16 autocast on CUDA (False: fp32 where `precision` is "auto").
        precision: "auto", "fp32", "bf16" or "int8" (`--precision`; int8: a model from `c3d quantize`).
        autorotate: turn frames as the video's display matrix says.
        max_pixels: most pixels in a frame (from the stream header, before decoding).
        max_aspect: most width/height (or height/width) of a frame.
        max_cpu_s: most CPU seconds one request's decoding may take.
        max_response_mb: largest answer (features, timelines), estimated before decoding.
        min_upload_kbps: slowest upload accepted, in kB/s averaged after the first `header_timeout_s` seconds.
        header_timeout_s: longest wait for a request's headers, and for each piece of its body.
        allowed_hosts: host names the Host header may give (DNS rebinding); IP addresses are always accepted,
            "*" accepts any name. Empty: the local names and `host` if it is a name.
        host: the address the server listens on (for the default `allowed_hosts`).
        api_key: when set, every /v1 request and /metrics needs `Authorization: Bearer <key>` (or `X-API-Key`).
        cors_origins: origins whose pages may call the API from a browser (CORS); empty: none but the server's own.
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
    precision: str = "auto"
    autorotate: bool = True
    max_pixels: int = 4096 * 2304
    max_aspect: float = 4.0
    max_cpu_s: float = 120.0
    max_response_mb: float = 128.0
    min_upload_kbps: float = 16.0
    header_timeout_s: float = 10.0
    allowed_hosts: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from c3dnet.inference.backends import precision_of

        precision_of(self.precision, self.amp)  # ConfigError naming --precision
        for name in ("max_batch", "max_queue", "max_pending", "decode_workers", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_duration_s", "request_timeout_s", "max_cpu_s", "max_response_mb",
                     "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_flag(name)} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.min_upload_kbps < 0:
            raise ConfigError(f"--max-wait-ms and --min-upload-kbps must be >= 0, got {self.max_wait_ms} and "
                              f"{self.min_upload_kbps}")
        if not self.max_aspect >= 1:
            raise ConfigError(f"--max-aspect must be >= 1 (width / height, or height / width), got "
                              f"{self.max_aspect}")
        if self.max_queue < self.max_batch:
            raise ConfigError(f"--max-queue ({self.max_queue}) must hold at least one batch (--max-batch "
                              f"{self.max_batch})")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ConfigError("--api-key must be at least 16 characters (e.g. python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"--cors-origin {origin!r} must be an origin like https://example.org (or *)")

    @property
    def backend_precision(self) -> str:
        """The `precision=` of the server's backend (`precision`, or fp32 where it is "auto" and `amp` is off)."""
        from c3dnet.inference.backends import precision_of

        return precision_of(self.precision, self.amp)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_duration_s, self.autorotate, FrameLimits(self.max_pixels, self.max_aspect),
                      self.max_cpu_s, int(self.max_response_mb * 2**20))

    def host_names(self) -> frozenset[str]:
        """Names the Host header may carry ("*": any)."""
        if self.allowed_hosts:
            return frozenset(h.lower() for h in self.allowed_hosts)
        names = set(LOCAL_NAMES)
        if not is_ip_address(self.host) and self.host:
            names.add(self.host.lower())
        return frozenset(names)

    def to_dict(self) -> dict[str, Any]:
        """The settings as /v1/model shows them (the API key's value left out)."""
        d = asdict(self)
        d["api_key"] = self.api_key is not None
        d["allowed_hosts"] = sorted(self.host_names())
        return d


def _flag(name: str) -> str:
    return {"max_duration_s": "--max-duration", "request_timeout_s": "--request-timeout",
            "max_cpu_s": "--max-cpu-seconds", "header_timeout_s": "--header-timeout"}.get(
        name, "--" + name.replace("_", "-"))


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True

