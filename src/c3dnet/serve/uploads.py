"""Receiving an upload: a streamed multipart body written to a private folder, with a size limit, then checked
by content (PyAV must find a video stream, whatever the file is called).

The body is parsed as it arrives (python-multipart's push parser), so an upload over the limit is refused after
`max_bytes`, not after it has filled a disk, and nothing lands in the system's shared temporary folder: the file
goes to the server's own folder (mode 0700) under a random name, and the caller removes it when done. Small form
fields (the request's options) are kept in memory, up to a few kB each.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from c3dnet.errors import printable

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message a person can act on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Upload:
    """The uploaded file (`path`, in the server's private folder) under its client-side `name`, and the form's
    other fields."""

    path: Path | None = None
    name: str = "upload"
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def display_name(filename: str) -> str:
    """The client's file name as shown back: its last path component, printable, at most 200 characters."""
    name = re.split(r"[\\/]", filename)[-1]
    name = "".join(c if c.isprintable() else "?" for c in name).strip()
    return name[:200] or "upload"


class _Receiver:
    """python-multipart callbacks: the `file` part to a private file, other parts to small strings."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.upload = Upload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file = None
        self.complete = False

    def on_end(self) -> None:
        self.complete = True

    def on_part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        kind, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise RequestError(400, "a multipart part has no form-data name; send the video as the form field "
                                    "`file` (curl -F file=@video.mp4)")
        self._name = name
        if name == "file":
            if self.upload.path is not None:
                raise RequestError(400, "send one video per request (the form has two `file` fields)")
            filename = params.get(b"filename")
            if filename is None:
                raise RequestError(400, "the `file` field is not a file upload; use curl -F file=@video.mp4")
            self.upload.name = display_name(filename.decode("utf-8", "replace"))
            self.upload.path = self.folder / f"{secrets.token_hex(12)}{_safe_suffix(self.upload.name)}"
            fd = os.open(self.upload.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")
        elif params.get(b"filename") is not None:
            raise RequestError(400, f"the form sends a file as the field {printable(name)!r}; send the video as the "
                                    "form field `file` (curl -F file=@video.mp4)")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise RequestError(400, f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._file is not None:
            self.upload.size += n
            if self.upload.size > self.max_bytes:
                raise _too_large(self.max_bytes)
            self._file.write(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise RequestError(400, f"form field {printable(self._name)!r} is longer than {MAX_FIELD_BYTES} "
                                        "bytes; send the video as the form field `file` (curl -F file=@video.mp4) "
                                        "and options in the query string")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name is not None:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _safe_suffix(name: str) -> str:
    """The file's extension if it is a plain one (some demuxers look at it), else none."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(413, f"the upload is larger than this server's limit of {max_bytes / 2**20:g} MB "
                             "(--max-upload-mb); send a shorter or smaller video")


async def paced(body: AsyncIterator[bytes], min_bytes_per_s: float, timeout_s: float) -> AsyncIterator[bytes]:
    """`body`'s chunks, as long as each arrives within `timeout_s` and, after the first `timeout_s` seconds, the
    body arrives at `min_bytes_per_s` on average (a client sending a byte every few seconds would otherwise hold
    its request slot until the request timeout).

    Raises:
        RequestError: 408 when a chunk is late or the upload is too slow.
    """
    start = time.monotonic()
    received = 0
    chunks = body.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestError(408, f"no part of the upload arrived for {timeout_s:g} s (--header-timeout); "
                                    "send it again") from None
        received += len(chunk)
        late = time.monotonic() - start - timeout_s
        if late > 0 and received < min_bytes_per_s * late:
            rate = received / max(time.monotonic() - start, 1e-9) / 1000
            raise RequestError(408, f"the upload arrives at {rate:.1f} kB/s, slower than this server's minimum of "
                                    f"{min_bytes_per_s / 1000:g} kB/s (--min-upload-kbps); send it again over a "
                                    "faster connection")
        yield chunk


async def receive_upload(content_type: str | None, content_length: str | None, body: AsyncIterator[bytes],
                         folder: Path, max_bytes: int) -> Upload:
    """Parse a multipart/form-data body into an `Upload`; its file is removed again if parsing fails.

    Raises:
        RequestError: not multipart (415), over the size limit (413), malformed or without a `file` (400).
    """
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise RequestError(415, f"expected a multipart/form-data upload with the video in the field `file`, got "
                                f"content type {content_type or 'none'!r}; e.g. curl -F file=@video.mp4 ...")
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes + 64 * 1024:
        raise _too_large(max_bytes)
    receiver = _Receiver(folder, max_bytes)
    callbacks = {name: getattr(receiver, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_end")}
    parser = MultipartParser(params[b"boundary"], callbacks)
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except RequestError:
                raise
            except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
                raise RequestError(400, f"malformed multipart body ({e}); send the video with curl -F "
                                        "file=@video.mp4 or a browser form") from None
        parser.finalize()
        if not receiver.complete:
            raise RequestError(400, "the multipart body ended early (the upload was cut off); send it again")
    except BaseException:
        receiver.close()
        receiver.upload.remove()
        raise
    receiver.close()
    upload = receiver.upload
    if upload.path is None:
        raise RequestError(400, "no video in the request: send it as the multipart form field `file` "
                                "(curl -F file=@video.mp4 ...)")
    if upload.size == 0:
        upload.remove()
        raise RequestError(400, f"{upload.name}: the upload is empty (0 bytes); choose a video file")
    return upload
