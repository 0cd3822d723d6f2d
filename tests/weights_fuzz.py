"""A fork server that loads mutated weight files, one forked child per case, under an address-space limit.

The server imports c3dnet once; each case is written to a file, then loaded by `load_model` in a child forked
from the server (a few ms, where a fresh interpreter takes seconds), with `RLIMIT_AS`, an alarm and a wall-clock
limit. A case ends in one of:
    loaded      the file loaded (a flipped byte in a weight is still a valid file)
    refused     a one-line WeightsError whose message starts with the file's path
    bad-message a WeightsError that does not name the file, or spans lines
    error       any other exception (its traceback is kept)
    over-memory peak RSS above the RSS at the fork exceeded 2N + 64 MB for a file of N bytes
    slow        the child took longer than the time limit (it is killed)
    crashed     the child died of a signal (out-of-memory kill, segfault) without reporting

Run it by hand (`python -m tests.weights_fuzz --cases 200 --keep DIR`) to reproduce or explore; the tests in
`tests/test_weights_fuzz.py` run it with fixed seeds. Mutators live in `tests/weights_mutators.py`, hostile
values and the issue's files in `tests/weights_hostile.py`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

OUTCOMES = ("loaded", "refused", "bad-message", "error", "over-memory", "slow", "crashed")
MEMORY_SLACK = 64 * 2**20
ADDRESS_SPACE = 2**30  # the child's address-space limit above what the server has mapped


@dataclass
class Case:
    """One mutated file to load: which format it came from, how it was made, and where it was written."""

    fmt: str
    index: int
    how: str
    path: Path


@dataclass
class Result:
    """What a child reported (or what the server saw happen to it)."""

    case: Case
    outcome: str
    seconds: float = 0.0
    peak_bytes: int = 0
    detail: str = ""


@dataclass
class Report:
    """Counts per format and outcome, the slowest case and largest peak, and every unexpected result."""

    counts: dict[str, Counter] = field(default_factory=dict)
    slowest: float = 0.0
    largest_peak: int = 0
    failures: list[dict] = field(default_factory=list)
    cases: list[dict] | None = None  # every case's result, when asked for (a handful of named files)

    def add(self, result: Result) -> None:
        if self.cases is not None:
            self.cases.append({"name": result.case.fmt, "outcome": result.outcome,
                               "size": result.case.path.stat().st_size, "seconds": round(result.seconds, 3),
                               "peak_mb": round(result.peak_bytes / 2**20, 1), "message": result.detail[:600]})
        self.counts.setdefault(result.case.fmt, Counter())[result.outcome] += 1
        self.slowest = max(self.slowest, result.seconds)
        self.largest_peak = max(self.largest_peak, result.peak_bytes)
        if result.outcome not in ("loaded", "refused"):
            self.failures.append({"format": result.case.fmt, "index": result.case.index, "how": result.case.how,
                                  "path": str(result.case.path), "outcome": result.outcome,
                                  "detail": result.detail[-3000:]})

    def merge(self, other: dict) -> None:
        """Add the counts and failures of another report's `to_dict()`."""
        for fmt, counts in other["counts"].items():
            self.counts.setdefault(fmt, Counter()).update(counts)
        self.slowest = max(self.slowest, other["slowest_seconds"])
        self.largest_peak = max(self.largest_peak, int(other["largest_peak_mb"] * 2**20))
        self.failures += other["failures"]

    def to_dict(self) -> dict:
        out = {
            "counts": {fmt: {o: c[o] for o in OUTCOMES if c[o]} for fmt, c in sorted(self.counts.items())},
            "slowest_seconds": round(self.slowest, 3),
            "largest_peak_mb": round(self.largest_peak / 2**20, 1),
            "failures": self.failures,
        }
        if self.cases is not None:
            out["cases"] = self.cases
        return out


def load_file(path: Path) -> object:
    """What the fuzzer loads a case with: Caffe mean files through their parser, weight files through load_model."""
    if path.suffix == ".binaryproto":
        from c3dnet.weights.caffe_mean import read_mean_file

        return read_mean_file(path)
    from c3dnet.weights import load_model

    return load_model(path)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _child(case: Case, write_fd: int, time_limit: float, load: Callable[[Path], object] | None) -> None:
    """Load `case.path` (with `load`, or `load_model`) and write one JSON line to `write_fd`; never returns."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)  # c3dnet's warnings about odd keys are expected; keep the output clean
        signal.alarm(int(time_limit) + 2)  # a backstop for the server's own wall-clock limit
        limit = _status("VmSize:") + ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from c3dnet.errors import WeightsError

        load = load or load_file
        start_rss = _status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM restarts from the current RSS
        start = time.perf_counter()
        detail = ""
        try:
            load(case.path)
            outcome = "loaded"
        except WeightsError as e:
            detail = str(e)
            named = detail.startswith(f"{case.path}: ") and "\n" not in detail
            outcome = "refused" if named else "bad-message"
        except BaseException:  # noqa: BLE001 - anything else is what the fuzzer looks for
            outcome, detail = "error", traceback.format_exc()
        seconds = time.perf_counter() - start
        peak = _status("VmHWM:") - start_rss
        underlying = outcome
        if peak > 2 * case.path.stat().st_size + MEMORY_SLACK:
            outcome, detail = "over-memory", f"peak {peak / 2**20:.1f} MB above the fork; {detail}"
        message = json.dumps({"outcome": outcome, "underlying": underlying, "seconds": seconds, "peak": peak,
                              "detail": detail[-4000:]})
        os.write(write_fd, message.encode() + b"\n")
    except BaseException:  # noqa: BLE001 - report, never fall back into the server's loop
        try:
            os.write(write_fd, json.dumps({"outcome": "error", "detail": traceback.format_exc()}).encode() + b"\n")
        except OSError:
            pass
    finally:
        os._exit(0)


@dataclass
class _Running:
    case: Case
    pid: int
    fd: int
    start: float
    data: bytes = b""


def _finish(job: _Running, killed: bool, recheck: bool = True) -> Result:
    _, status = os.waitpid(job.pid, 0)
    os.close(job.fd)
    elapsed = time.perf_counter() - job.start
    if killed:
        return Result(job.case, "slow", elapsed, detail=f"killed after {elapsed:.1f} s")
    line = job.data.decode(errors="replace").strip()
    if not line:
        reason = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        return Result(job.case, "crashed", elapsed, detail=f"no report; the child ended with {reason}")
    report = json.loads(line)
    if recheck and report["outcome"] == "over-memory" and report.get("underlying") in ("loaded", "refused"):
        # A forked child's RSS also grows by the server's pages it merely touches (reference counts written on
        # shared pages are copied: torch's weights-only error path touches tens of MB of them). The rule is
        # about a process that has imported c3dnet: measure the case again in a fresh one.
        fresh = fresh_process_peak(job.case.path)
        if fresh is not None and fresh <= 2 * job.case.path.stat().st_size + MEMORY_SLACK:
            return Result(job.case, report["underlying"], report.get("seconds", elapsed), fresh,
                          f"{report['detail']} (copy-on-write in the fork; {fresh / 2**20:.1f} MB in a fresh process)")
    return Result(job.case, report["outcome"], report.get("seconds", elapsed), report.get("peak", 0),
                  report.get("detail", ""))


_FRESH = r"""
import sys
import c3dnet.weights
from c3dnet.errors import WeightsError
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
start = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
from c3dnet.weights.caffe_mean import read_mean_file
try:
    (read_mean_file if sys.argv[1].endswith(".binaryproto") else c3dnet.weights.load_model)(sys.argv[1])
except WeightsError:
    pass
print(status("VmHWM:") - start)
"""


def fresh_process_peak(path: Path) -> int | None:
    """Peak RSS growth (bytes) of loading `path` in a new interpreter that has imported c3dnet (None: failed)."""
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", _FRESH, str(path)], capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def _warm_up(bases: Iterable[tuple[str, bytes]] = ()) -> None:
    """Make the server's children measure loading, not importing: compile and import c3dnet's modules here, and
    load each valid base file and a truncated copy of it (the paths a load and a refusal take), so that no child
    compiles a module (a fresh checkout has no .pyc) or imports one lazily on its own memory."""
    import compileall

    import c3dnet
    import c3dnet.safe_pickle  # noqa: F401
    import c3dnet.weights.caffe_mean  # noqa: F401
    import c3dnet.weights.files  # noqa: F401
    import c3dnet.weights.layouts  # noqa: F401
    import c3dnet.weights.load  # noqa: F401
    import c3dnet.weights.native  # noqa: F401
    import c3dnet.weights.torchzip  # noqa: F401
    from c3dnet.errors import C3DError

    compileall.compile_dir(str(Path(c3dnet.__file__).parent), quiet=1)
    for ext, data in bases:  # (extension, bytes) of each valid base file
        with tempfile.TemporaryDirectory() as tmp:
            whole, cut = Path(tmp) / f"whole{ext}", Path(tmp) / f"cut{ext}"
            whole.write_bytes(data)
            cut.write_bytes(data[: len(data) // 2])
            for path in (whole, cut):
                try:
                    load_file(path)
                except C3DError:
                    pass


def run_cases(cases: Iterable[Case], workers: int = 2, time_limit: float = 10.0,
              on_result: Callable[[Result], None] | None = None,
              load: Callable[[Path], object] | None = None, record: bool = False) -> Report:
    """Load every case in a forked child (`workers` at a time) and count the outcomes.

    Args:
        cases: an iterable of `Case`, each written to disk by the time it is drawn.
        workers: children running at once.
        time_limit: seconds a child may take before it is killed and counted as "slow".
        on_result: called with each `Result` (e.g. to delete the case file of a success).
        load: what a child calls on the file (default: `load_file`: `load_model`, or the mean-file parser).
        record: keep every case's result in `Report.cases`.
    """
    _warm_up()

    report, running, pending = Report(cases=[] if record else None), {}, iter(cases)
    gc.collect()
    gc.freeze()  # the children's garbage collector then leaves the server's objects (and their pages) alone
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < workers:
            case = next(pending, None)
            if case is None:
                exhausted = True
                break
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(case, write_fd, time_limit, load)
            os.close(write_fd)
            running[read_fd] = _Running(case, pid, read_fd, time.perf_counter())
        if not running:
            break
        ready, _, _ = select.select(list(running), [], [], 0.05)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                running[fd].data += chunk
                continue
            result = _finish(running.pop(fd), killed=False, recheck=load is None)
            report.add(result)
            if on_result:
                on_result(result)
        now = time.perf_counter()
        for fd, job in list(running.items()):
            if now - job.start > time_limit:
                os.kill(job.pid, signal.SIGKILL)
                result = _finish(running.pop(fd), killed=True)
                report.add(result)
                if on_result:
                    on_result(result)
    gc.unfreeze()
    return report


def fuzz(seed: int, cases_per_format: int, workdir: Path, workers: int = 2, formats: tuple[str, ...] | None = None,
         keep: bool = False, time_limit: float = 10.0) -> Report:
    """Mutate the base file of each format `cases_per_format` times and load every mutant in a child.

    Cases are deterministic for a seed: case i of format f is made by `random.Random(f"{seed}/{f}/{i}")`.
    With several workers, the server forks one sub-server per worker, each making and loading its share of
    the cases (forking is the server's own work, so one server cannot keep two cores busy).
    Files of cases that load or are refused are deleted unless `keep`; the others stay for reproduction.
    """
    import torch

    from tests import weights_mutators as mutators

    torch.set_num_threads(1)  # before any torch op: no thread pool exists when the server forks
    bases = mutators.make_bases(workdir / "bases")
    _warm_up((base.ext, base.data) for base in bases.values())
    names = formats or tuple(bases)

    def cases(part: int, parts: int):
        for i in range(part, cases_per_format, parts):
            for name in names:
                base = bases[name]
                rng = random.Random(f"{seed}/{name}/{i}")
                path = workdir / f"{name}_{i:05d}{base.ext}"
                how = mutators.mutate(base, rng, path)
                yield Case(name, i, how, path)

    def cleanup(result: Result) -> None:
        if not keep and result.outcome in ("loaded", "refused"):
            result.case.path.unlink(missing_ok=True)

    if workers <= 1:
        return run_cases(cases(0, 1), workers=1, time_limit=time_limit, on_result=cleanup)
    subservers = []
    for part in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 1
            try:
                report = run_cases(cases(part, workers), workers=1, time_limit=time_limit, on_result=cleanup)
                with os.fdopen(write_fd, "w") as out:
                    json.dump(report.to_dict(), out)
                code = 0
            except BaseException:  # noqa: BLE001 - say why, then leave without running the server's code
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_fd)
        subservers.append((pid, read_fd))
    merged = Report()
    for pid, read_fd in subservers:
        with os.fdopen(read_fd) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        if not text:
            raise RuntimeError(f"fuzz sub-server {pid} ended without a report (status {status})")
        merged.merge(json.loads(text))
    return merged


SELFTEST = ("load", "refuse", "unnamed", "multiline", "error", "address-space", "memory", "hang", "crash")


def _selftest_load(path: Path) -> None:
    """A stand-in for `load_model` that produces each outcome on demand (the file holds which)."""
    from c3dnet.errors import WeightsError

    what = path.read_text()
    if what == "refuse":
        raise WeightsError(f"{path}: refused")
    if what == "unnamed":
        raise WeightsError("refused without naming the file")
    if what == "multiline":
        raise WeightsError(f"{path}: refused\nin two lines")
    if what == "error":
        raise KeyError("a bug")
    if what == "address-space":
        bytearray(ADDRESS_SPACE + 2**20)  # beyond RLIMIT_AS: MemoryError
    if what == "memory":
        block = b"\x01" * (100 * 2**20)  # 100 MB touched, for a file of a few bytes
        del block
    if what == "hang":
        time.sleep(600)
    if what == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would


def selftest(workdir: Path, time_limit: float = 2.0) -> Report:
    """One case per outcome through the real fork server, loaded by `_selftest_load`."""
    cases = []
    for i, what in enumerate(SELFTEST):
        path = workdir / f"{what}.case"
        path.write_text(what)
        cases.append(Case(what, i, what, path))
    return run_cases(cases, workers=2, time_limit=time_limit, load=_selftest_load, record=True)


def hostile(workdir: Path, time_limit: float = 30.0) -> Report:
    """The issue's hostile files (`weights_mutators.hostile_files`), each loaded in a child."""
    import torch

    from tests.weights_hostile import hostile_files

    torch.set_num_threads(1)
    files = hostile_files(workdir)
    cases = [Case(name, i, name, path) for i, (name, path) in enumerate(files.items())]
    return run_cases(cases, workers=2, time_limit=time_limit, record=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=1000, help="cases per format")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", nargs="*", help="subset of formats (default: all)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--keep", type=Path, help="write cases here and keep them all (default: a temporary dir "
                                                  "keeping only unexpected cases)")
    parser.add_argument("--selftest", action="store_true", help="one synthetic case per outcome, not fuzzing")
    parser.add_argument("--hostile", action="store_true", help="the issue's hostile files, not fuzzing")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="c3dnet-fuzz-"))
    start = time.perf_counter()
    if args.selftest:
        report = selftest(workdir)
    elif args.hostile:
        report = hostile(workdir, args.time_limit)
    else:
        report = fuzz(args.seed, args.cases, workdir, args.workers, tuple(args.formats) if args.formats else None,
                      keep=bool(args.keep), time_limit=args.time_limit)
    out = report.to_dict()
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["workdir"] = str(workdir)
    print(json.dumps(out, indent=1))
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
