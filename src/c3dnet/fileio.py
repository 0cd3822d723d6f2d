"""Atomic file output: a crash at any moment leaves either the old file or the complete new one.

Example:
    >>> from c3dnet.fileio import atomic_write
    >>> with atomic_write("out/report.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from c3dnet.errors import C3DError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos of a full disk (or a full quota)."""


class OutputError(C3DError):
    """An output folder that cannot take what is written to it: a full disk, a read-only or foreign folder."""


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still put in `folder`'s filesystem (-1 where that cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def output_error(e: OSError, folder: str | os.PathLike[str], what: str, needed: int | None = None,
                 remedy: str = "choose another output folder") -> OutputError:
    """One clear line for an `OSError` met writing `what` into `folder`: with a full disk, the bytes needed and
    free, then what to do (free some space, or `remedy`)."""
    if e.errno in NO_SPACE:
        free = free_bytes(folder)
        have = f", {free:,} free" if free >= 0 else ""
        need = f" ({needed:,} bytes needed{have})" if needed is not None else f" ({free:,} bytes free)" if have else ""
        return OutputError(f"{folder}: no space left on the device for {what}{need}; free some space, or {remedy}")
    return OutputError(f"{folder}: cannot write {what} ({e.strerror or e}); fix the folder, or {remedy}")


def reserve(fd: int, size: int, folder: str | os.PathLike[str]) -> None:
    """Allocate `size` bytes of the open file `fd` (in `folder`) now, so that a full disk shows here, as `OSError`
    ENOSPC before any work, and later writes into that range cannot run out of space. Where the filesystem (or
    the OS) cannot allocate ahead, the free space is compared instead."""
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if allocate is not None:
        try:
            allocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno in NO_SPACE:
                raise
    if 0 <= free_bytes(folder) < size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path`, for writers that need a file name (video encoders, `np.save`).

    On success the temporary file is fsynced and renamed over `path`; on any exception (including a full
    disk) it is removed and `path` is untouched. The name is unique per process, so several processes may
    write the same target: the last complete write wins and no reader ever sees a partial file. Give the
    target's extension as `suffix` when the writer picks its format by extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Make a finished temporary file (in `path`'s folder) durable and rename it over `path`.

    The file gets the permissions a plain `open` would give (mkstemp makes 0600), then is fsynced, renamed,
    and the rename itself fsynced.
    """
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path` whole (see `atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def _umask() -> int:
    """The process's umask, read once: setting it to read it (the only portable way) is not thread-safe, so
    Linux's /proc/self/status is read instead where it says."""
    global _UMASK
    if _UMASK is None:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            with open("/proc/self/status", encoding="ascii") as f:
                _UMASK = int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
        if _UMASK is None:
            _UMASK = os.umask(0)
            os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a process of another user counts as alive).

    What stale-file clean-up asks before taking over a dead process's lock or temporary folder.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True
