"""Who may talk to the server: the Host header, the Origin of browser requests, and an optional API key.

- **Host.** A page on another site can resolve its own name to 127.0.0.1 after it has loaded (DNS rebinding) and
  then call a server on this machine as if it were its own origin. Its requests carry that name in their Host
  header, so a name outside `ServeConfig.host_names()` is refused (421). An IP address cannot be rebound, so Host
  headers that are addresses pass.
- **Origin.** Browsers send an Origin header with every cross-origin POST, also with simple form posts that need
  no CORS preflight. A request whose Origin is neither this server's own (the Host it was sent to), nor an allowed
  host name, nor one of `cors_origins`, is refused (403): another site's page cannot make the server decode
  videos for it. Clients that are not browsers send no Origin.
- **API key.** With `api_key` set, /v1 and /metrics answer only requests carrying it (`Authorization: Bearer
  KEY` or `X-API-Key: KEY`), compared in constant time; the page at / asks for it.

The checks run before the request body is read, in a plain ASGI middleware, and answer in the server's JSON form.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from c3dnet.serve.config import ServeConfig, is_ip_address

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
"""Paths that need no API key: the page (it asks for the key), liveness probes and the API's description."""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def split_host(value: str) -> tuple[str, str]:
    """(host, port) of a Host header value or an origin's netloc: "[::1]:8000" -> ("::1", "8000")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


class AccessGuard:
    """ASGI middleware: the Host, Origin and API-key checks above."""

    def __init__(self, app: Callable, config: ServeConfig) -> None:
        self.app = app
        self.names = config.host_names()
        self.any_host = "*" in self.names
        self.origins = frozenset(o.rstrip("/").lower() for o in config.cors_origins)
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *[(k.encode(), v.encode()) for k, v in extra.items()]]})
        await send({"type": "http.response.body", "body": body})

    def host_allowed(self, host: str) -> bool:
        return self.any_host or is_ip_address(host) or host in self.names

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) for a request to refuse, or None."""
        host_header = headers.get("host", "")
        host = split_host(host_header)[0]
        if host and not self.host_allowed(host):
            return 421, (f"this server does not answer for the host name {host!r} (a page may be using DNS "
                         "rebinding to reach it); start it with --allowed-hosts NAME to serve that name"), {}
        origin = headers.get("origin")
        if origin and origin != "null" and not self.origin_allowed(origin.rstrip("/").lower(), host_header):
            return 403, (f"requests from pages at {origin} are refused; start the server with --cors-origin "
                         f"{origin} to let that site call it"), {}
        if self.key is not None and scope.get("path", "/") not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            if not self.key_matches(headers):
                return 401, ("this server needs an API key: send it as 'Authorization: Bearer KEY' or "
                             "'X-API-Key: KEY'"), {"WWW-Authenticate": "Bearer"}
        return None

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if not parts.hostname:
            return False
        port = str(parts.port or {"http": 80, "https": 443}.get(parts.scheme, ""))
        sent_to = split_host(host_header)
        same_origin = parts.hostname == sent_to[0] and port == (sent_to[1] or port)
        return same_origin or parts.hostname in self.names

    def key_matches(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.key)
