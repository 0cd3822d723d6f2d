"""Atomic file output: a crash at any moment leaves either the old file or the complete new one.

Example:
    >>> from c3dnet.fileio import atomic_write
    >>> with atomic_write("out/report.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


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
