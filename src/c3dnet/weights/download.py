"""Weight files by name: the cache, verified and resumable downloads, a mirror, and an offline mode.

Files live in `$C3DNET_HOME/weights/` (default `$XDG_CACHE_HOME/c3dnet`, else `~/.cache/c3dnet`). A download
streams into `<file>.part` in the cache, resumes with an HTTP Range request after an interruption, and is renamed
to its final name only once its SHA-256 matches the published prefix. Its full digest is then recorded beside it
(`<file>.sha256`, in `sha256sum` format) and every later load checks it. A file with no published digest is
trusted on first download and checked against that record afterwards.

Several processes wanting one file download it once: an OS file lock in the cache (`filelock`: the kernel
releases it when its holder dies) lets one download while the others wait; under torchrun the local rank 0 goes
first. Environment:

    C3DNET_HOME               the cache folder
    C3DNET_WEIGHTS_MIRROR     a base URL: every file is fetched as `<mirror>/<file name>` instead of its origin
    C3DNET_OFFLINE=1          never touch the network; a missing file is an error saying what to put where
    C3DNET_DOWNLOAD_TIMEOUT   seconds without data before a connection is given up (default 30)
    C3DNET_DOWNLOAD_RETRIES   further attempts after a network error (default 4)
    C3DNET_DOWNLOAD_BACKOFF   seconds before the first retry, doubling after each (default 1)

Example:
    >>> from c3dnet.weights.download import fetch
    >>> path = fetch("c3d-ucf101-mmaction2")          # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from c3dnet.distinfo import DistInfo
from c3dnet.errors import WeightsError
from c3dnet.fileio import atomic_write_text, publish
from c3dnet.log import get_logger, progress_bar
from c3dnet.weights.registry import Pretrained, find

log = get_logger(__name__)

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HTML = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


def cache_dir() -> Path:
    """Where weight files are kept: `$C3DNET_HOME/weights`, `$XDG_CACHE_HOME/c3dnet/weights` or
    `~/.cache/c3dnet/weights`."""
    home = os.environ.get("C3DNET_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home = os.path.join(xdg, "c3dnet") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "c3dnet")
    return Path(home) / "weights"


def offline() -> bool:
    return os.environ.get("C3DNET_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def source_url(entry: Pretrained) -> str | None:
    """The URL to fetch `entry` from: the mirror's `<base>/<file name>` when C3DNET_WEIGHTS_MIRROR is set."""
    mirror = os.environ.get("C3DNET_WEIGHTS_MIRROR", "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.file_name}"
    return entry.url


@dataclass(frozen=True)
class Settings:
    """Network settings (from the environment by default; tests make them small)."""

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    wait: float = 6 * 3600.0  # how long a process waits for another one's download

    @classmethod
    def from_env(cls) -> Settings:
        try:
            return cls(timeout=float(os.environ.get("C3DNET_DOWNLOAD_TIMEOUT", cls.timeout)),
                       retries=int(os.environ.get("C3DNET_DOWNLOAD_RETRIES", cls.retries)),
                       backoff=float(os.environ.get("C3DNET_DOWNLOAD_BACKOFF", cls.backoff)))
        except ValueError as e:
            raise WeightsError(f"C3DNET_DOWNLOAD_TIMEOUT / _RETRIES / _BACKOFF must be numbers ({e})") from None


# ------------------------------------------------------------------------------------------------ digests


def _hash(path: Path) -> tuple[Any, int]:
    """A SHA-256 object fed with the whole file, and the file's size."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest, size


def sha256_of(path: Path) -> str:
    return _hash(path)[0].hexdigest()


def digest_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_digest(path: Path) -> str | None:
    """The full SHA-256 recorded for a cached file (by its first verified download), or None."""
    try:
        text = digest_record(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def _record(path: Path, digest: str) -> None:
    atomic_write_text(digest_record(path), f"{digest}  {path.name}\n")


def check_digest(entry: Pretrained | None, path: Path, digest: str) -> None:
    """Raise a WeightsError naming both digests when `digest` contradicts the published prefix or the record."""
    recorded = recorded_digest(path)
    expected = recorded or (entry.sha256_prefix.lower() if entry and entry.sha256_prefix else None)
    if expected and not digest.startswith(expected):
        what = "the digest recorded at its first download" if recorded else "the published SHA-256 prefix"
        raise WeightsError(f"{path}: SHA-256 {digest} does not match {what} {expected}; the file is corrupt or not "
                           f"the published one")


def verify(path: Path, entry: Pretrained | None = None) -> str:
    """Check a cached file against its recorded digest (or its entry's published prefix) and record the digest
    if none was; returns it. A mismatch removes the file (the cache's own copy) and raises a WeightsError naming
    both digests."""
    digest = sha256_of(path)
    try:
        check_digest(entry, path, digest)
    except WeightsError as e:
        path.unlink(missing_ok=True)
        raise WeightsError(f"{e}; it was removed from the cache, load it again to download it again") from None
    if recorded_digest(path) is None:
        _record(path, digest)
    return digest


# ------------------------------------------------------------------------------------------------ download


def _network_error(url: str, e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        hint = {403: "access denied (the link may have expired or need a login)",
                404: "not found (the file moved or the link is wrong)",
                416: "the server refused the byte range asked for"}.get(e.code, e.reason or "")
        return f"HTTP {e.code} from {url}: {hint}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot reach {url} ({e.reason})"
    if isinstance(e, ValueError):
        return f"{url} is not a usable URL ({e}); check C3DNET_WEIGHTS_MIRROR"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no data from {url} for too long (timed out)"
    return f"the connection to {url} broke ({type(e).__name__}: {str(e)[:120] or 'no detail'})"


def _retryable(e: BaseException) -> bool:
    if isinstance(e, ValueError):
        return False
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return True


class _DiskError(Exception):
    """Writing the part file failed (a full disk, say): not a network error, never retried."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Transfer:
    """One file's transfer into `<file>.part`, resumed across attempts; the digest grows with the bytes."""

    def __init__(self, url: str, part: Path, settings: Settings, progress: bool,
                 open_part: Callable[[Path, str], IO[bytes]]) -> None:
        self.url, self.part, self.settings, self.progress, self.open_part = url, part, settings, progress, open_part
        # An interrupted earlier download: hash what is there and continue after it.
        self.digest, self.size = _hash(part) if part.exists() else (hashlib.sha256(), 0)

    def restart(self) -> None:
        self.digest, self.size = hashlib.sha256(), 0
        self.part.unlink(missing_ok=True)

    def attempt(self) -> bool:
        """Fetch what is missing; True when the file is complete."""
        request = urllib.request.Request(self.url, headers={"User-Agent": "c3dnet"})
        if self.size:
            request.add_header("Range", f"bytes={self.size}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.settings.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and self.size:  # nothing after what we have: complete, or a changed file
                total = re.search(r"/(\d+)", e.headers.get("Content-Range", "") or "")
                if total and int(total.group(1)) == self.size:
                    return True
                self.restart()
                raise
            raise
        with response:
            total = self._total(response)
            try:
                out = self.open_part(self.part, "ab")
            except OSError as e:
                raise _DiskError(e) from e
            bar = progress_bar(total, self.part.name.removesuffix(".part"), "B", initial=self.size,
                               enabled=self.progress)
            bar.unit_scale = True  # tqdm: kB/MB/GB; the plain-line fallback ignores it
            try:
                while block := response.read(CHUNK):
                    if self.size == 0 and block.lstrip()[:14].lower().startswith(_HTML):
                        raise WeightsError(
                            f"{self.url}: the server sent a web page, not the weight file (it starts with "
                            f"{block.lstrip()[:40]!r}); the mirror or link is wrong or the file is missing there"
                        )
                    try:
                        out.write(block)
                    except OSError as e:
                        raise _DiskError(e) from e
                    self.digest.update(block)
                    self.size += len(block)
                    bar.update(len(block))
            finally:
                bar.close()
                try:
                    out.close()  # flushes: a full disk may show only here
                except OSError as e:
                    raise _DiskError(e) from e
        if total is not None and self.size < total:
            raise http.client.IncompleteRead(b"", total - self.size)
        return True

    def _total(self, response: Any) -> int | None:
        """The file's whole size, after making sure the response continues where `.part` ends."""
        kind = (response.headers.get("Content-Type") or "").lower()
        if kind.startswith("text/html"):
            raise WeightsError(f"{self.url}: the server sent a web page (Content-Type {kind}), not the weight file; "
                               f"the mirror or link is wrong or the file is missing there")
        length = response.headers.get("Content-Length")
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != self.size:
                self.restart()  # a range we did not ask for: start over
                raise http.client.IncompleteRead(b"", None)
            return int(match.group(3)) if match.group(3) != "*" else None
        if self.size:
            log.info("%s: the server ignored the range request; downloading the whole file again", self.url)
            self.restart()
        return int(length) if length and length.isdigit() else None


def _open_part(path: Path, mode: str) -> IO[bytes]:
    return open(path, mode)


def download(entry: Pretrained, dest: Path, settings: Settings | None = None, progress: bool = True,
             open_part: Callable[[Path, str], IO[bytes]] = _open_part) -> str:
    """Download `entry` to `dest` (through `<dest>.part`), verify it, rename it into place; returns its digest.

    The caller holds the file's lock. Network errors are retried with exponential backoff, resuming where the
    data stopped; HTTP 4xx errors (but 408 and 429) are not. A digest that does not match removes the part file.

    Args:
        open_part: opens the part file (for tests that simulate a full disk).

    Raises:
        WeightsError: every failure, with the URL, what went wrong and what to do; `dest` is never left partial.
    """
    settings = settings or Settings.from_env()
    url = source_url(entry)
    if url is None:
        raise _manual_error(entry, dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{dest.parent}: cannot create the weights cache ({e.strerror or e}); set C3DNET_HOME to "
                           f"a writable folder") from None
    transfer = _Transfer(url, part, settings, progress, open_part)
    log.info("downloading %s from %s%s", entry.name, url, f" (resuming at {transfer.size:,} bytes)"
             if transfer.size else "")
    for attempt in range(settings.retries + 1):
        try:
            if transfer.attempt():
                break
        except WeightsError:
            transfer.restart()
            raise
        except _DiskError as disk:
            e, written = disk.error, transfer.size
            transfer.restart()  # a partial file on a full disk only takes the space that is missing
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WeightsError(f"{dest.parent}: no space left on the device while downloading {entry.file_name} "
                                   f"({written:,} bytes written); free some space, or point C3DNET_HOME at "
                                   f"a larger disk") from None
            raise WeightsError(f"{part}: cannot write the download ({e.strerror or e})") from None
        except OSError as e:  # URLError, HTTPError, timeouts, resets
            last = e
        except (http.client.HTTPException, ValueError) as e:
            last = e
        if not _retryable(last) or attempt == settings.retries:
            if isinstance(last, urllib.error.HTTPError) and last.code < 500:
                transfer.restart()
            raise WeightsError(f"{entry.name}: download failed: {_network_error(url, last)}"
                               f"{' after ' + str(attempt + 1) + ' attempts' if attempt else ''}. "
                               f"{_where_to_put(entry, dest)}") from None
        delay = settings.backoff * 2 ** attempt
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", entry.name, _network_error(url, last), delay,
                    attempt + 2, settings.retries + 1)
        time.sleep(delay)
    digest = transfer.digest.hexdigest()
    try:
        check_digest(entry, dest, digest)
    except WeightsError as e:
        transfer.restart()
        raise WeightsError(f"{e}; the download from {url} was removed, try again or use another mirror") from None
    publish(part, dest)
    _record(dest, digest)
    log.info("%s: verified (SHA-256 %s) and saved as %s", entry.name, digest, dest)
    return digest


def _where_to_put(entry: Pretrained, dest: Path) -> str:
    origin = entry.url or entry.manual
    return f"To install it by hand, put {entry.file_name} at {dest} (from {origin})"


def _manual_error(entry: Pretrained, dest: Path) -> WeightsError:
    return WeightsError(f"{entry.name}: no direct download; get {entry.file_name} from {entry.manual}, then pass its "
                        f"path to --weights, or put it at {dest} to load it by name")


# ------------------------------------------------------------------------------------------------ fetch


def _rank_waits() -> bool:
    """Whether this process is a torchrun worker other than its machine's local rank 0."""
    info = DistInfo.from_env()
    return info.is_distributed and info.local_rank != 0


def fetch(name: str, settings: Settings | None = None, progress: bool | None = None) -> Path:
    """The verified local path of the registry entry `name`, downloading it first if needed.

    Raises:
        WeightsError: an unknown name (with the close ones), offline without the file (saying what to put
        where), or a failed or mismatched download.
    """
    entry = find(name)
    settings = settings or Settings.from_env()
    if progress is None:  # not asked: a bar where someone watches (-q hides every bar: `log.progress_bar`)
        progress = sys.stderr.isatty()
    folder = cache_dir()
    dest = folder / entry.file_name
    if dest.is_file():
        verify(dest, entry)
        return dest
    if entry.url is None and not os.environ.get("C3DNET_WEIGHTS_MIRROR"):
        raise _manual_error(entry, dest)
    if offline():
        raise WeightsError(f"{entry.name}: not in the cache and C3DNET_OFFLINE is set, so nothing is downloaded. "
                           f"Put {entry.file_name} at {dest} (from {source_url(entry) or entry.manual}), or unset "
                           f"C3DNET_OFFLINE")
    lock_path = folder / ".locks" / f"{entry.file_name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if _rank_waits():  # let local rank 0 take the lock first
        start = time.monotonic()
        while not dest.is_file() and not _held(lock_path) and time.monotonic() - start < 10.0:
            time.sleep(0.1)
    lock = FileLock(lock_path)  # an OS lock: released by the kernel when its holder dies, however it dies
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is downloading %s; waiting for it", entry.name, entry.file_name)
        try:
            lock.acquire(timeout=settings.wait)
        except Timeout:
            raise WeightsError(f"{entry.name}: waited {settings.wait:.0f} s for another process to download "
                               f"{dest} (it holds {lock_path}); let it finish, or stop it and run again") from None
    try:
        if not dest.is_file():
            download(entry, dest, settings, progress)
            return dest
    finally:
        lock.release()
    verify(dest, entry)
    return dest


def _held(lock_path: Path) -> bool:
    """Whether another process holds the lock at `lock_path` now."""
    probe = FileLock(lock_path)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def resolve(path: str | os.PathLike[str], progress: bool | None = None) -> tuple[Path, Pretrained | None]:
    """`path` itself when it exists (an existing path always wins), else the cached file of the registry name
    (downloaded first if needed, with a progress bar as `fetch` decides) and its entry.

    Raises:
        WeightsError: a name-like `path` that is neither a file nor a registry name (with the close names).
    """
    from c3dnet.weights.registry import close_names, looks_like_name, lookup

    text = os.fspath(path)
    entry = None if os.path.exists(text) else lookup(text)
    if entry is None:
        if not os.path.exists(text) and looks_like_name(text):
            raise WeightsError(f"{text}: no such weights file, and not a known weight name{close_names(text)}; "
                               f"`c3d weights list` shows the names")
        return Path(text), None
    return fetch(text, progress=progress), entry


def cached_files() -> list[Path]:
    """Every weight file in the cache (not the records, part files or locks)."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith((".sha256", ".part")))


__all__ = ["CHUNK", "Settings", "cache_dir", "cached_files", "check_digest", "digest_record", "download", "fetch",
           "offline", "recorded_digest", "resolve", "sha256_of", "source_url", "verify"]
