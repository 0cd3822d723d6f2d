"""One extraction's output folder: which videos are done, their temporaries, their locks, failures, the manifest.

Several processes (or torchrun ranks, or hosts on a shared disk) may extract into one folder. A video is done
when both its `.npy` and its `.parts/<key>.json` exist: the `.npy` is renamed into place complete, and the part is
written after it. Locks (`HeartbeatLock`) keep two processes from working on one video; a process that died leaves
its lock and temporaries behind, and whoever locks that video next removes them.

Example:
    >>> out = OutputDir("feats")                                   # doctest: +SKIP
    >>> out.is_done("v_Drumming_g01_c01")                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from c3dnet.errors import DataError
from c3dnet.features.locks import REMEDY, HeartbeatLock, break_locks
from c3dnet.features.manifest import (
    LOCKS_DIR,
    PARTS_DIR,
    TIMES_SUFFIX,
    TMP_TAG,
    ManifestEntry,
    parse_entry,
    write_merged_manifest,
)
from c3dnet.fileio import OutputError, atomic_write_text, output_error

if TYPE_CHECKING:
    from c3dnet.data.sources import SkippedItem

UNLISTED = ".unlisted.failed"
"""Suffix of the failure records of inputs that could not be listed (`.parts/<hash of the path>.unlisted.failed`)."""


class OutputDir:
    """The files of an extraction folder, by video key (`features.output_keys`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def create(self) -> OutputDir:
        for name in (PARTS_DIR, LOCKS_DIR):
            folder = self.path / name
            if folder.exists() and not folder.is_dir():
                raise DataError(f"{folder}: is a file where c3d extract keeps its {name[1:]}; remove it (or choose "
                                "another --out folder)")
        try:
            (self.path / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise DataError(f"{self.path}: is not a folder; choose another --out") from e
        except OSError as e:
            raise output_error(e, self.path, f"its {PARTS_DIR} folder", remedy=REMEDY) from e
        return self

    def npy(self, key: str) -> Path:
        return self.path / f"{key}.npy"

    def times(self, key: str) -> Path:
        """The rows' sidecar: for each row, its first and last source frame and its start and end in seconds."""
        return self.path / f"{key}{TIMES_SUFFIX}"

    def part(self, key: str) -> Path:
        return self.path / PARTS_DIR / f"{key}.json"

    def is_done(self, key: str) -> bool:
        return self.part(key).is_file() and self.npy(key).is_file()

    def check_same_settings(self, key: str, wanted: dict[str, Any]) -> None:
        """`DataError` when the finished video `key` was extracted with other `wanted` settings."""
        part = self.part(key)
        entry = parse_entry(part.read_text(encoding="utf-8"), str(part)).to_dict()
        differ = {k: (entry[k], v) for k, v in wanted.items() if entry[k] != v}
        if differ:
            what = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
            raise DataError(f"{part}: {self.path} already holds features extracted with other settings ({what}); "
                            "use another --out folder, or the same settings to resume")

    def write_part(self, entry: ManifestEntry) -> None:
        """The mark of done (after the `.npy`); clears an earlier failure of the same video."""
        atomic_write_text(self.part(entry.key), json.dumps(entry.to_dict()) + "\n")
        with contextlib.suppress(FileNotFoundError):
            (self.path / PARTS_DIR / f"{entry.key}.failed").unlink()

    def write_failed(self, key: str, video: str, error: str) -> None:
        self._write_failure(self.path / PARTS_DIR / f"{key}.failed", video, error)

    def write_unlisted(self, skipped: list[SkippedItem], searched: list[str | os.PathLike[str]]) -> None:
        """Record the inputs that could not be listed (a symlink loop, an unreadable folder or file) as failures,
        merged into failed.txt like those of videos; clear the earlier records under the `searched` paths that list
        fine now (records under other paths belong to other runs sharing the folder)."""
        bad = {os.path.abspath(item.where): item.reason for item in skipped}
        roots = [os.path.abspath(p) for p in searched]
        for record in (self.path / PARTS_DIR).glob(f"*{UNLISTED}"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                where = json.loads(record.read_text(encoding="utf-8"))["video"]
                if where not in bad and any(where == r or where.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
                    record.unlink()
        for where, reason in bad.items():
            name = hashlib.sha1(where.encode("utf-8", "surrogateescape")).hexdigest()[:16] + UNLISTED
            self._write_failure(self.path / PARTS_DIR / name, where, reason)

    def _write_failure(self, path: Path, video: str, error: str) -> None:
        try:
            atomic_write_text(path, json.dumps({"video": video, "error": error}) + "\n")
        except OSError as e:
            raise output_error(e, self.path, f"the failure record {path.name}", remedy=REMEDY) from e

    def leftovers(self, keys: set[str]) -> dict[str, list[str]]:
        """Temporary files of the videos `keys` (`.<key>.c3dpart-<pid>-*.npy.tmp`, `.<key>.npy.*.tmp`,
        `.<key>.times.csv.*.tmp`), by key.

        Listed once for a whole run: a search per video would read the whole folder each time, which grows
        quadratically with the number of videos. Each is removed only by the process that then locks its video.
        """
        found: dict[str, list[str]] = {}
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = entry.name
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                candidates = []  # every key the name could start with; the longest is the most specific
                for marker in (f".{TMP_TAG}", ".npy.", f"{TIMES_SUFFIX}."):
                    cut = name.find(marker, 1)
                    while cut > 1:
                        if name[1:cut] in keys:
                            candidates.append(name[1:cut])
                        cut = name.find(marker, cut + 1)
                if candidates:
                    found.setdefault(max(candidates, key=len), []).append(name)
        return found

    def remove(self, names: list[str]) -> None:
        """Temporary files of a process that died on a video (only its lock holder writes them)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def lock(self, key: str, owner_pid: int | None = None) -> HeartbeatLock:
        """The (not yet acquired) lock of video `key`, taken for `owner_pid` (default this process)."""
        return HeartbeatLock(self.path / LOCKS_DIR / f"{key}.lock", owner_pid=owner_pid)

    def held_lock(self, key: str) -> HeartbeatLock:
        """This process's view of a lock that one of its decoder processes took for it (its heartbeat keeps it)."""
        return self.lock(key).hold()

    def release_own_locks(self) -> None:
        """Every lock taken for this process (by it or by its decoder processes)."""
        locks = self.path / LOCKS_DIR
        if not locks.is_dir():
            return
        token = self.lock("").token
        for path in locks.glob("*.lock"):
            lock = HeartbeatLock(path)
            lock.token = token
            lock.held = True
            lock.release()  # only if it holds this process's token

    def break_locks(self) -> list[str]:
        """Remove every lock of this folder (`c3d extract --break-locks`); a line per lock says what it was."""
        return break_locks(self.path / LOCKS_DIR)

    def clear_stale_locks(self) -> None:
        """Locks of finished videos whose owner died between writing the outputs and releasing the lock."""
        if not (self.path / LOCKS_DIR).is_dir():
            return
        for path in (self.path / LOCKS_DIR).glob("*.lock"):
            if self.is_done(path.stem):
                lock = HeartbeatLock(path)
                if lock.acquire():
                    lock.release()

    def end_run(self, finished: bool) -> None:
        """After a run, finished or stopped: this process's locks released, stale ones cleared, the manifest
        merged. The merge's `OutputError` is raised only for a run that finished: otherwise the error that stopped
        it (a full disk, most likely) is the one to report, and the parts stay the record the next run merges."""
        self.release_own_locks()  # also those of videos a decoder process had locked but not yet started
        try:
            self.clear_stale_locks()
            self.merge_manifest()
        except OutputError:
            if finished:
                raise

    def merge_manifest(self) -> int:
        """(Re)write `manifest.jsonl`, `keys.csv` and `failed.txt` from the per-video parts; returns the entry
        count. `OutputError` when the disk cannot take them (the parts stay the record: a rerun merges them)."""
        try:
            return write_merged_manifest(self.path)
        except OSError as e:
            raise output_error(e, self.path, "the merged manifest (every video is extracted; rerun to merge)",
                               remedy=REMEDY) from e
