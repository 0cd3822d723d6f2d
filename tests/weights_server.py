"""A real HTTP server on 127.0.0.1, in a thread of the test process, serving weight files the way hosts misbehave.

Each file has a queue of behaviours, one per request (then "ok"):
    ok          the file, with Range support (206 + Content-Range), Content-Length
    drop        half of what was asked for, then the connection is closed (Content-Length says more)
    corrupt     the file with one byte flipped
    truncated   the first half, with a Content-Length that says so (a complete, short response)
    slow        nothing for `slow_seconds`, then the file (a client timeout fires first)
    html        200 with an HTML error page, as a misconfigured mirror serves
    html-typed  the same page as application/octet-stream (only the content gives it away)
    404 / 403 / 500   that status
    no-range    the whole file with 200 even when a range is asked for
Every request is logged as (path, Range header). Nothing here reaches outside the machine.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

_PAGE = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    plans: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    slow_seconds: float = 2.0
    chunk_delay: float = 0.0  # seconds between 64 kB chunks (to make two downloads overlap)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout under test): expected
            self.close_connection = True

    def _get(self) -> None:
        state = self.state
        name = self.path.rsplit("/", 1)[-1]
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
            plan = state.plans[name].popleft() if state.plans[name] else "ok"
        data = state.files.get(name)
        if plan in ("404", "403", "500") or data is None:
            code = int(plan) if plan in ("404", "403", "500") else 404
            self._send(code, b"error\n", "text/plain")
            return
        if plan in ("html", "html-typed"):
            self._send(200, _PAGE, "text/html; charset=utf-8" if plan == "html" else "application/octet-stream")
            return
        if plan == "slow":
            time.sleep(state.slow_seconds)
        if plan == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if plan == "truncated":
            data = data[: len(data) // 2]
        start = 0
        ranged = self.headers.get("Range")
        if ranged and plan != "no-range":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if plan == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(body), 1 << 16):
            self.wfile.write(body[i:i + (1 << 16)])
            if state.chunk_delay:
                time.sleep(state.chunk_delay)

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class WeightServer:
    """`with WeightServer() as server:` serves `server.state.files` at `server.url(name)`."""

    def __init__(self) -> None:
        self.state = ServerState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> WeightServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str, folder: str = "files") -> str:
        return f"{self.base}/{folder}/{name}"

    def add(self, name: str, data: bytes, *plan: str) -> None:
        self.state.files[name] = data
        self.state.plans[name].extend(plan)

    def gets(self, name: str) -> list[str | None]:
        """The Range header of each request for `name` (None: the whole file)."""
        return [r for path, r in self.state.requests if path.endswith("/" + name)]
