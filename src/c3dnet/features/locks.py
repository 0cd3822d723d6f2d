"""Heartbeat lock files (`HeartbeatLock`), one per video in OUT/.locks: created with O_CREAT|O_EXCL, kept fresh by a
heartbeat, reclaimed when stale. (Weight downloads use an OS lock instead: `weights.download`.)

A lock holds "pid host start" (the owner's process start time tells a reused pid apart). While it is held, a
heartbeat thread of its owner touches it every `HEARTBEAT_S` seconds, however long its video takes. A lock is
stale, and reclaimed with a warning, when its heartbeat is older than `STALE_S` (its owner died or hangs, on this
host or any other), or when its owner is a process of this host that no longer runs (or a new process under a
reused pid). `break_locks` clears them all by hand (`c3d extract --break-locks`).

Correctness never rests on the lock alone: outputs are renamed into place complete, so two processes that both
extract a video (a lock race, or a lock broken by hand) still leave one complete file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from pathlib import Path

from c3dnet.errors import DataError
from c3dnet.fileio import output_error, pid_alive
from c3dnet.log import get_logger

log = get_logger(__name__)

REMEDY = "choose another --out folder"
"""What to do about an output folder that cannot take the features, besides freeing space (`c3d extract`)."""
HEARTBEAT_S = 10.0
"""Seconds between two touches of a held lock."""
STALE_S = 60.0
"""A lock whose heartbeat is older than this is stale, whoever holds it."""
TORN_S = 5.0
"""A lock file still empty (or unparsable) after this long was left by a process that died creating it."""


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


def _read(path: Path) -> tuple[str, float] | None:
    """(contents, mtime) of a lock file, never following a symlink; None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4096) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip(), st.st_mtime


def is_stale(owner: str, mtime: float, now: float | None = None) -> bool:
    """Whether a lock with contents `owner` last touched at `mtime` may be taken over."""
    age = (time.time() if now is None else now) - mtime
    if age > STALE_S:
        return True  # no heartbeat for a minute: its owner is gone (or hung), whichever host it is on
    parts = owner.split()
    if len(parts) < 2 or not parts[0].isdigit():
        return age > TORN_S  # empty or torn: its writer died between create and write (or is writing now)
    pid, host = int(parts[0]), parts[1]
    if host != socket.gethostname():
        return False  # another machine's process: its heartbeat says whether it lives
    if not pid_alive(pid):
        return True
    started = parts[2] if len(parts) > 2 else None
    return started is not None and started != "-" and process_start(pid) not in (None, started)  # a reused pid


class Heartbeat:
    """A daemon thread touching every lock it is given, every `interval_s` seconds (one per process serves all of
    its locks: `PROCESS_HEARTBEAT`)."""

    def __init__(self, interval_s: float = HEARTBEAT_S) -> None:
        self.interval_s = interval_s
        self.held: dict[Path, str] = {}  # lock file -> its token
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def add(self, path: Path, token: str) -> None:
        with self.lock:
            self.held[path] = token
            if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():  # (not after a fork)
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="c3d-lock-heartbeat", daemon=True)
                self.thread.start()

    def discard(self, path: Path) -> None:
        with self.lock:
            self.held.pop(path, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self.lock:
                held = list(self.held.items())
            for path, token in held:
                current = _read(path)
                if current is not None and current[0] == token:
                    with contextlib.suppress(OSError):
                        os.utime(path, follow_symlinks=False)


PROCESS_HEARTBEAT = Heartbeat()


class HeartbeatLock:
    """A lock file kept fresh by its owner's heartbeat (see the module docstring): what several `c3d extract`
    processes, on one host or many sharing a disk, claim videos with. Held by `owner_pid` (default: this process).
    """

    def __init__(self, path: Path, owner_pid: int | None = None, heartbeat: Heartbeat = PROCESS_HEARTBEAT) -> None:
        """`owner_pid`: the process the lock stands for; a decoder process takes locks for the extraction process
        that writes the outputs, so the lock lives exactly as long as that writer (whose heartbeat keeps it)."""
        self.path, self.heartbeat = path, heartbeat
        pid = owner_pid or os.getpid()
        self.token = f"{pid} {socket.gethostname()} {process_start(pid) or '-'}"
        self.held = False

    def acquire(self) -> bool:
        """Take the lock: True, or False while a live owner holds it. `OutputError` when no lock file can be
        written there (a full disk, say), `DataError` when its folder is a file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise DataError(f"{self.path.parent}: is not a folder, so no lock can be taken there; remove it (c3d "
                            "extract keeps its locks in OUT/.locks)") from e
        except OSError as e:
            raise output_error(e, self.path.parent.parent, "its lock folder", remedy=REMEDY) from e
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(3):
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileExistsError:
                if not self._reclaim_stale():
                    return False
                continue
            except OSError as e:
                raise output_error(e, self.path.parent.parent, f"the lock of {self.path.stem}", remedy=REMEDY) from e
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(self.token + "\n")
            except OSError as e:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # an empty lock is nobody's: it would only wait to turn stale
                raise output_error(e, self.path.parent.parent, f"the lock of {self.path.stem}", len(self.token) + 1,
                                   REMEDY) from e
            self.held = True
            return True
        return False

    def hold(self) -> HeartbeatLock:
        """Keep this (held) lock fresh with its heartbeat."""
        self.held = True
        self.heartbeat.add(self.path, self.token)
        return self

    def _reclaim_stale(self) -> bool:
        if self.path.is_symlink():  # not a lock c3dnet wrote: removed as it is, its target never read
            log.warning("%s: a symlink where a lock file belongs; removed", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return True
        current = _read(self.path)
        if current is None:
            return True  # released meanwhile: try again
        owner, mtime = current
        if not is_stale(owner, mtime):
            return False
        # Rename (atomic) rather than unlink, and check that what we took is the stale lock: a process that
        # reclaimed it first and wrote its own must keep it.
        grabbed = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, grabbed)
        except FileNotFoundError:
            return True
        taken = _read(grabbed)
        if taken is not None and taken[0] == owner:
            grabbed.unlink()
            log.warning("%s: took over a stale lock (%s, last heartbeat %.0f s ago)", self.path.name,
                        owner or "empty", time.time() - mtime)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(grabbed, self.path)  # put a live owner's lock back
        grabbed.unlink()
        return False

    def release(self) -> None:
        if self.held:
            self.heartbeat.discard(self.path)
            current = _read(self.path)
            if current is not None and current[0] == self.token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False


def break_locks(locks_dir: Path) -> list[str]:
    """Remove every lock in `locks_dir`; returns a line per lock saying what it was (owner, heartbeat age)."""
    said = []
    for path in sorted(locks_dir.glob("*.lock")) if locks_dir.is_dir() else []:
        current = None if path.is_symlink() else _read(path)
        what = "a symlink" if current is None else \
            f"held by {current[0] or '(empty)'}, last heartbeat {time.time() - current[1]:.0f} s ago"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        said.append(f"{path.stem}: {what}")
    return said
