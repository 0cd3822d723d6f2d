"""Kill a `c3d` command at a point its own code reaches, not after polling: deterministic crash tests.

`start(args, target, after, marker)` runs `python -m c3dnet.cli ARGS` in a child whose `target` function
("module:attribute" or "module:Class.method") is wrapped: once `after(result_of_call, *args)` is true for a
completed call, the wrapper touches `marker` and blocks forever, so the process stops exactly there (and every
other call to the target blocks too). `kill_at_marker(proc, marker)` waits for the marker, then SIGKILLs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import importlib, pathlib, sys, threading
target, marker, condition = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
module_name, attr = target.split(":")
owner = importlib.import_module(module_name)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)
stop = threading.Event()
calls = [0]

def hooked(*args, **kwargs):
    if stop.is_set():
        threading.Event().wait()  # blocked for good: the process is about to be killed
    result = real(*args, **kwargs)
    calls[0] += 1
    if eval(condition, {"calls": calls[0], "args": args}):
        stop.set()
        marker.touch()
        threading.Event().wait()
    return result

setattr(owner, name, hooked)
from c3dnet.cli import main
sys.exit(main(sys.argv[4:]))
"""


def child_command(args: list[str], target: str, condition: str, marker: Path) -> list[str]:
    """The command line of `start`'s child (also a program for torchrun --no-python to launch)."""
    return [sys.executable, "-c", _CHILD, target, str(marker), condition, *map(str, args)]


def start(args: list[str], target: str, condition: str, marker: Path, env: dict[str, str]) -> subprocess.Popen:
    """The child `c3d ARGS`, stopping once a completed call to `target` makes `condition` true; `condition` is a
    Python expression over `calls` (completed calls so far) and `args` (the call's arguments)."""
    return subprocess.Popen(child_command(args, target, condition, marker), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def kill_at_marker(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    """SIGKILL `proc` once it has touched `marker`; fail (with its stderr) if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its kill point (exit {proc.returncode}): "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach its kill point in {timeout} s")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
