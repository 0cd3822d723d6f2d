"""`check_json_shape` counts items and depth outside strings, in chunks, without building a stripped copy."""

from __future__ import annotations

import json
import random
import re

import pytest

from c3dnet.weights import native


def _reference(raw: bytes) -> tuple[int, int]:
    """Items and maximum depth by the obvious method: strings removed by a regular expression."""
    skeleton = re.sub(rb'"(?:[^"\\]++|\\.)*+"', b'""', raw)
    depth = best = 0
    for c in skeleton:
        depth += (c in b"[{") - (c in b"]}")
        best = max(best, depth)
    return skeleton.count(b",") + skeleton.count(b":"), best


def _value(rng: random.Random, level: int):
    kind = rng.random()
    if level > 4 or kind < 0.4:
        return "".join(rng.choice('ab"\\\\,:[]{}\\n é') for _ in range(rng.randrange(12)))
    if kind < 0.7:
        return [_value(rng, level + 1) for _ in range(rng.randrange(5))]
    return {_value(rng, 9): _value(rng, level + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 16])
def test_items_and_depth_match_the_obvious_method(chunk, monkeypatch):
    monkeypatch.setattr(native, "JSON_CHUNK", chunk)  # small chunks: escapes and strings across their borders
    rng = random.Random(chunk)
    for _ in range(300):
        raw = json.dumps(_value(rng, 0), ensure_ascii=rng.random() < 0.5).encode()
        items, depth = _reference(raw)
        assert native.check_json_shape(raw, depth, items) is None, raw
        assert native.check_json_shape(raw, depth, items - 1) == f"more than {items - 1:,} items" or items == 0
        if depth:
            assert native.check_json_shape(raw, depth - 1, items) == f"nesting deeper than {depth - 1} levels"


def test_a_long_list_costs_little_memory():
    """The fuzzer's case: 200,000 class names (2.5 MB). Measured in a forked child from its own RSS at the fork."""
    import os

    raw = json.dumps([f"name{i}" for i in range(200_000)]).encode()

    def kb(field: str) -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        start = kb("VmRSS")
        ok = native.check_json_shape(raw, 1, 3) == "more than 3 items" \
            and native.check_json_shape(raw, 1, 300_000) is None
        os.write(write, f"{int(ok)} {kb('VmHWM') - start}".encode())
        os._exit(0)
    os.close(write)
    ok, grown = map(int, os.read(read, 100).split())
    os.waitpid(pid, 0)
    assert ok == 1 and grown < 16_000, f"{grown} KB"  # the substitution it replaced took about 40 MB
