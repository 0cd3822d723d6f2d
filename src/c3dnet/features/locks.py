"""Per-video lock files in OUT/.locks: O_CREAT|O_EXCL "pid host" files, reclaimed when their owner is dead."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from c3dnet.fileio import pid_alive
from c3dnet.log import get_logger

log = get_logger(__name__)


class VideoLock:
    """A per-video lock file created with O_CREAT|O_EXCL holding "pid host"; a dead owner's lock is reclaimed.

    Correctness never rests on the lock alone: outputs are renamed into place complete, so two processes that
    both extract a video (a lock race, or a lock on another host that died) still leave one complete file.
    """

    def __init__(self, path: Path, owner_pid: int | None = None) -> None:
        """`owner_pid`: the process the lock stands for (default this one); a decoder process takes locks for
        the extraction process that writes the outputs, so the lock lives exactly as long as that writer."""
        self.path = path
        self.token = f"{owner_pid or os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._reclaim_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
            self.held = True
            return True
        return False

    def _reclaim_stale(self) -> bool:
        try:
            owner = self.path.read_text().strip()
        except FileNotFoundError:
            return True  # released meanwhile: try again
        if not owner_is_dead(owner):
            return False
        # Rename (atomic) rather than unlink, and check that what we took is the dead owner's lock: a
        # process that reclaimed it first and wrote its own must keep it.
        grabbed = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, grabbed)
        except FileNotFoundError:
            return True
        if grabbed.read_text().strip() == owner:
            grabbed.unlink()
            log.info("%s: reclaimed the lock of a dead process (%s)", self.path.name, owner)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(grabbed, self.path)  # put a live owner's lock back
        grabbed.unlink()
        return False

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                if self.path.read_text().strip() == self.token:
                    self.path.unlink()
            self.held = False


def owner_is_dead(owner: str) -> bool:
    """True when a lock's owner "pid host" is a process on this host that no longer runs (or the file is torn)."""
    try:
        pid_text, host = owner.split(maxsplit=1)
        pid = int(pid_text)
    except ValueError:
        return True  # an empty or torn lock file: its writer died between create and write
    if host != socket.gethostname():
        return False  # cannot check another machine's processes
    return not pid_alive(pid)
