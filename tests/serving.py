"""A real `c3d serve` for the serving tests: a subprocess on 127.0.0.1 at a free port, with a tiny model.

`Server` starts `python -m c3dnet.cli serve` with its own TMPDIR (so the tests can see its private upload folder),
waits for /readyz, and stops it (SIGINT, then SIGKILL) at the end; `upload` posts a file as the form field `file`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from c3dnet.data.encode import write_video
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config

PRE = Preprocess(clip_len=8, crop_size=32, short_side=36)
NAMES = ["walk", "run", "jump", "swim", "climb"]


def tiny_weights(path: Path) -> Path:
    """A tiny C3D with visible class preferences (probabilities not all about 1/5), saved with class names."""
    torch.manual_seed(0)
    model = C3D(tiny_config(), preprocess=PRE, class_names=NAMES).eval()
    with torch.no_grad():
        model.head.weight.mul_(0.05)
    save_model(model, path)
    return path


def noise_video(path: Path, n: int, seed: int = 0, height: int = 48, width: int = 64) -> Path:
    """An MPEG-4 AVI of `n` frames of blocky noise (different clips give different logits)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, height // 8, width // 8, 3), dtype=np.uint8)
    write_video(path, np.repeat(np.repeat(base, 8, axis=1), 8, axis=2))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`c3d serve --weights W <flags>` in a subprocess; `url`, `pid`, `tmp` (its TMPDIR) and `log()`."""

    def __init__(self, weights: Path, tmp: Path, *flags: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp.parent / f"{tmp.name}.log"
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "2"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "c3dnet.cli", "serve", "--weights", str(weights), "--port", str(self.port),
             "--device", "cpu", *flags], stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"c3d serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"c3d serve did not become ready in 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def folders(self) -> list[Path]:
        """The server's private upload folders (one while it runs)."""
        return sorted(self.tmp.glob("c3d-serve-*"))

    def uploads_left(self) -> list[Path]:
        return [p for folder in self.folders() for p in folder.iterdir()]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.fullmatch(r"([a-z0-9_]+)(?:\{(.*)\})? (\S+)", line)
            if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
                return float(m.group(3))
        return 0.0

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def upload(url: str, path: Path | None = None, data: bytes | None = None, name: str | None = None,
           timeout: float = 60, **kwargs) -> httpx.Response:
    """POST a file (or bytes under `name`) as the multipart field `file`."""
    content = data if data is not None else path.read_bytes()
    return httpx.post(url, files={"file": (name or path.name, content, "application/octet-stream")},
                      timeout=timeout, **kwargs)
