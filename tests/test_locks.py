"""Extraction locks: heartbeats, stale locks of any host, reused pids, symlinks, torn files, --break-locks."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from c3dnet.errors import DataError
from c3dnet.features import locks
from c3dnet.features.locks import HeartbeatLock, break_locks, process_start
from c3dnet.features.output import OutputDir


@pytest.fixture(autouse=True)
def _logs(monkeypatch):
    monkeypatch.setattr(logging.getLogger("c3dnet"), "propagate", True)


def _write(path, text, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    t = time.time() - age
    os.utime(path, (t, t))


def test_the_heartbeat_keeps_a_held_lock_fresh(tmp_path, monkeypatch):
    lock = HeartbeatLock(tmp_path / "v.lock", heartbeat=locks.Heartbeat(0.05))
    assert lock.acquire()
    lock.hold()
    old = time.time() - 600
    os.utime(lock.path, (old, old))
    deadline = time.time() + 5
    while os.stat(lock.path).st_mtime < old + 1 and time.time() < deadline:
        time.sleep(0.02)
    assert os.stat(lock.path).st_mtime > time.time() - 5  # touched again
    lock.release()
    assert not lock.path.exists()


def test_a_lock_without_a_heartbeat_is_stale_on_any_host(tmp_path, caplog):
    path = tmp_path / "v.lock"
    _write(path, "4242 some-other-host 77\n")  # another machine's live process, heartbeat fresh: busy
    assert not HeartbeatLock(path).acquire()
    _write(path, "4242 some-other-host 77\n", age=120)  # no heartbeat for two minutes: taken over
    lock = HeartbeatLock(path)
    assert lock.acquire() and path.read_text().split()[0] == str(os.getpid())
    assert "took over a stale lock (4242 some-other-host 77, last heartbeat 120 s ago)" in caplog.text
    lock.release()


def test_dead_and_reused_pids_of_this_host(tmp_path):
    host = socket.gethostname()
    path = tmp_path / "v.lock"
    _write(path, f"{os.getpid()} {host} {process_start(os.getpid())}\n")
    assert not HeartbeatLock(path).acquire()  # this very process, alive: busy
    _write(path, f"{os.getpid()} {host} 1\n")  # the same pid, another start time: a reused pid
    assert HeartbeatLock(path).acquire()
    path.unlink()
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    _write(path, f"{dead} {host} 5\n")
    assert HeartbeatLock(path).acquire()


def test_torn_locks_wait_a_moment_and_symlinks_are_never_followed(tmp_path, caplog):
    path = tmp_path / "v.lock"
    _write(path, "")  # just created, its token not yet written: busy
    assert not HeartbeatLock(path).acquire()
    _write(path, "", age=30)  # left empty by a process that died creating it
    assert HeartbeatLock(path).acquire()
    path.unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not print me")
    path.symlink_to(secret)
    lock = HeartbeatLock(path)
    assert lock.acquire() and not path.is_symlink()
    assert secret.read_text() == "do not print me" and "do not print me" not in caplog.text
    assert "a symlink where a lock file belongs; removed" in caplog.text


def test_break_locks_says_what_it_removed(tmp_path):
    out = OutputDir(tmp_path).create()
    _write(tmp_path / ".locks" / "a.lock", "123 elsewhere 9\n", age=30)
    (tmp_path / ".locks" / "b.lock").symlink_to(tmp_path / "nothing")
    said = out.break_locks()
    assert said[0].startswith("a: held by 123 elsewhere 9, last heartbeat 3") and said[1] == "b: a symlink"
    assert list((tmp_path / ".locks").iterdir()) == [] and break_locks(tmp_path / "none") == []


def test_a_file_where_the_locks_go_is_a_clear_error(tmp_path):
    (tmp_path / ".locks").write_text("")
    with pytest.raises(DataError, match=r"\.locks: is a file where c3d extract keeps its locks"):
        OutputDir(tmp_path).create()
