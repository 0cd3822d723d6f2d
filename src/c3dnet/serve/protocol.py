"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers.

uvicorn closes idle keep-alive connections, but a connection that sends part of a request line or headers and
then trickles (a byte every few seconds, "slowloris") is kept open for ever, and enough of them take every
connection the server accepts. Here a connection must complete each request's headers within `header_timeout_s`
of its first byte (or of the connection opening): else it is closed. Bodies have their own pace limits
(`c3dnet.serve.uploads`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def protocol_with_header_timeout(header_timeout_s: float) -> type[H11Protocol]:
    """An `H11Protocol` class that closes connections whose headers take longer than `header_timeout_s`."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._awaiting_headers() and self._header_timer is None:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.logger.info("closed a connection whose request headers took more than %g s", header_timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol
