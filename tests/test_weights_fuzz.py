"""Fuzzing the weight loaders: 1,000 mutants of each format, each loaded in a forked child under an
address-space limit, must load or be refused with one line naming the file, fast and within 2N + 64 MB.

The fork server (`tests/weights_fuzz.py`) runs as its own process: pytest's process has started torch's
threads, and a process with threads must not fork. Its own behaviour is tested first, with a stand-in loader
that produces every outcome, so that a fuzz run finding nothing means the loaders, not the harness.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("caffe", "caffe-mean", "mmaction2", "mmengine", "native", "paddle", "sequential")
CASES = 500
SEED = 17


def _server(*args: str, timeout: float = 300) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.weights_fuzz", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=timeout)
    assert out.stdout.strip(), out.stderr[-3000:]
    return json.loads(out.stdout)


def _describe(failures: list[dict]) -> str:
    return "\n".join(f"{f['format']} #{f['index']} ({f['how']}) -> {f['outcome']}: {f['path']}\n{f['detail'][-1500:]}"
                     for f in failures[:5])


def test_fork_server_tells_every_outcome_apart() -> None:
    report = _server("--selftest", timeout=120)
    outcomes = {case["name"]: case["outcome"] for case in report["cases"]}
    assert outcomes == {
        "load": "loaded", "refuse": "refused", "unnamed": "bad-message", "multiline": "bad-message",
        "error": "error", "address-space": "error", "memory": "over-memory", "hang": "slow", "crash": "crashed",
    }
    details = {case["name"]: case["message"] for case in report["cases"]}
    assert "MemoryError" in details["address-space"] and "KeyError: 'a bug'" in details["error"]
    memory = next(case for case in report["cases"] if case["name"] == "memory")
    assert 95 <= memory["peak_mb"] <= 110  # 100 MB touched, measured from the fork


def test_the_issues_hostile_files_are_refused_within_bounds() -> None:
    report = _server("--hostile", timeout=120)
    cases = {case["name"]: case for case in report["cases"]}
    assert len(cases) == 19 and not report["failures"], _describe(report["failures"])
    for name, case in cases.items():
        expected = "loaded" if name in ("nest45-weights.pdparams", "nest45-meta.pth", "mmengine-nest45.pth") \
            else "refused"
        assert case["outcome"] == expected, (name, case)
        assert case["seconds"] < 2.0, (name, case)
        assert case["peak_mb"] * 2**20 <= 2 * case["size"] + 64 * 2**20, (name, case)
    assert "compressed (" in cases["bomb.pth"]["message"] and "-> 200,000,000 bytes" in cases["bomb.pth"]["message"]
    assert "fc 2000000" in cases["meta-fc_dim.safetensors"]["message"]
    assert "numpy.ndarray(...) called directly" in cases["ndarray.pdparams"]["message"]
    assert "viewing a storage of only 4 bytes" in cases["zero-stride.pth"]["message"]
    assert "the global `posix.system`" in cases["mmengine-payload.pth"]["message"]
    assert "a field of 4,611,686,018,427,387,904 bytes" in cases["mean-length.binaryproto"]["message"]
    assert "values for a blob of shape (4096, 4096, 4096, 4096, 4096)" in cases["mean-dims.binaryproto"]["message"]


@pytest.mark.slow
def test_five_hundred_mutants_of_every_format_load_or_are_refused() -> None:
    report = _server("--cases", str(CASES), "--seed", str(SEED), "--workers", "2", "--time-limit", "10",
                     timeout=600)
    counts = report["counts"]
    print("\nfuzz counts per format:", json.dumps(counts, sort_keys=True),
          f"slowest {report['slowest_seconds']} s, largest peak {report['largest_peak_mb']} MB")
    assert not report["failures"], _describe(report["failures"])
    assert sorted(counts) == list(FORMATS)
    for fmt in FORMATS:
        assert set(counts[fmt]) == {"loaded", "refused"}, (fmt, counts[fmt])
        assert sum(counts[fmt].values()) == CASES
        # Both paths are exercised: mutants that still load, and many more that are refused.
        assert counts[fmt]["loaded"] >= CASES // 20 and counts[fmt]["refused"] >= CASES // 2, (fmt, counts[fmt])
    assert report["slowest_seconds"] < 5.0
