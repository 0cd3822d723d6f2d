"""The cost of serving: clips/s and requests/s of `c3d serve` with N concurrent clients, with dynamic batching and
with --max-batch 1 (the naive server: one clip per forward pass), against the same model in-process.

Every row extracts fc6 features of the same generated video (320x240 MPEG-4 AVI, like UCF-101's, stride 16) through
`POST /v1/features`; the in-process row calls `c3dnet.extract_features` on the file in a loop, one video at a time
(a notebook's way). The servers run in this process (uvicorn in a thread) on 127.0.0.1.

Usage:
    python benchmarks/bench_serve.py                                   # CPU: a reduced C3D (widths /4, fc 512)
    python benchmarks/bench_serve.py --model full --device cuda --clients 32 --requests 256 --frames 160
    python benchmarks/bench_serve.py --model full --precision fp32,int8 --clients 4 --requests 16 --max-batch 4

--precision takes a comma-separated list (auto, fp32, bf16, int8): the in-process and dynamic-batching rows are
measured for each in one run (the naive row for the first only); int8 is an OpenVINO model quantized as `c3d
quantize` does, on random clips (benchmarks/precisions.py), so its speed, not its accuracy, is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.data.encode import write_video  # noqa: E402
from c3dnet.device import configure_for, select_device  # noqa: E402
from c3dnet.inference.backends import Backend  # noqa: E402
from c3dnet.model import C3D, C3DConfig  # noqa: E402
from common import environment, markdown_table, write_results  # noqa: E402
from precisions import backend_for, parse_precisions  # noqa: E402

MODELS = {
    "small": C3DConfig(num_classes=101, width_mult=0.25, fc_dim=512),
    "full": C3DConfig(num_classes=101),
}


def make_video(path: Path, frames: int) -> Path:
    """A 320x240 video of moving blocky noise (MPEG-4 Part 2, as UCF-101's XviD files)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 240 // 8, 320 // 8, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # (30, 240, 320, 3)
    write_video(path, np.stack([np.roll(big[i % 30], 4 * i, axis=1) for i in range(frames)]))
    return path


class Running:
    """A `c3d serve` app on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, model: C3D | Backend, device: torch.device, **config) -> None:
        import uvicorn

        from c3dnet.serve import ServeConfig, create_app

        self.app = create_app(model, device, ServeConfig(**config), "benchmark")
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.service = self.app.state.service
        while not self.service.ready.is_set():
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def load(url: str, data: bytes, clients: int, requests: int) -> tuple[float, np.ndarray, int]:
    """Seconds for `requests` POSTs by `clients` concurrent clients, their latencies and the clips answered."""
    import httpx

    sessions = [httpx.Client(timeout=600) for _ in range(clients)]

    def one(i: int) -> tuple[float, int]:
        tick = time.perf_counter()
        r = sessions[i % clients].post(f"{url}/v1/features?layer=fc6", files={"file": ("v.avi", data)})
        r.raise_for_status()
        return time.perf_counter() - tick, r.json()["shape"][0]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    for s in sessions:
        s.close()
    return seconds, np.array([t for t, _ in results]), sum(n for _, n in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--frames", type=int, default=64, help="frames of the video (clips = frames // 16)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=4)
    parser.add_argument("--precision", default="auto",
                        help="auto, fp32, bf16 or int8, or a comma-separated list: rows for each (see above)")
    args = parser.parse_args()
    precisions = parse_precisions(args.precision)
    device = configure_for(select_device(args.device))
    torch.manual_seed(0)
    model = C3D(MODELS[args.model]).eval()
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "v.avi", args.frames)
        payload = video.read_bytes()
        for k, precision in enumerate(precisions):
            backend = backend_for(model, device, precision)
            label = "" if precisions == ["auto"] else f" [{backend.precision}, {backend.runtime}]"
            suffix = "" if precisions == ["auto"] else f"_{precision}"
            measure(backend, device, video, payload, args, rows, data, label, suffix, naive=k == 0)
    table = markdown_table(["path", "clients", "requests/s", "clips/s", "p50 ms", "p99 ms", "clips per forward",
                            "requests per forward"], rows)
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    title = (f"Serving: {args.model} C3D, fc6 of a {args.frames}-frame 320x240 video ({args.frames // 16} clips), "
             f"{args.requests} requests")
    name = f"serve_{args.model}_{device.type}" + ("" if precisions == ["auto"] else "_" + "_".join(precisions))
    write_results(name, title, environment(device), table, data, command.strip())


def measure(model: Backend, device: torch.device, video: Path, payload: bytes, args: argparse.Namespace,
            rows: list, data: dict, label: str, suffix: str, naive: bool) -> None:
    """The in-process row and the served rows (naive only when `naive`) of one backend, into `rows` and `data`."""
    import c3dnet

    c3dnet.extract_features(model, video, device=device)  # warm-up
    n = max(4, args.requests // 4)
    latency = []
    for _ in range(n):
        tick = time.perf_counter()
        clips = len(c3dnet.extract_features(model, video, device=device))
        latency.append(time.perf_counter() - tick)
    seconds = sum(latency)
    rows.append(["in-process, one video at a time" + label, 1, n / seconds, n * clips / seconds,
                 float(np.percentile(latency, 50) * 1000), float(np.percentile(latency, 99) * 1000),
                 float(clips), 1.0])
    data["in_process" + suffix] = {"requests_per_s": n / seconds, "clips_per_s": n * clips / seconds}
    served = [("served, --max-batch 1 (naive)", 1)] if naive else []
    for name, max_batch in served + [(f"served, dynamic batching (--max-batch {args.max_batch})",
                                      args.max_batch)]:
        server = Running(model, device, max_batch=max_batch, max_queue=max(256, 4 * max_batch),
                         max_pending=max(32, args.clients), decode_workers=args.decode_workers)
        try:
            load(server.url, payload, args.clients, args.clients)  # warm-up: every batch size once
            m = server.service.batcher
            batches0, clips0 = m.batches, m.clips
            shared0 = server.service.metrics.batch_requests.collect()[0].samples
            seconds, latency, answered = load(server.url, payload, args.clients, args.requests)
            batches, clips = m.batches - batches0, m.clips - clips0
            shared = server.service.metrics.batch_requests.collect()[0].samples
            sums = {s.name: s.value for s in shared}
            sums0 = {s.name: s.value for s in shared0}
            per_batch = (sums["c3d_batch_requests_sum"] - sums0["c3d_batch_requests_sum"]) / max(batches, 1)
        finally:
            server.stop()
        rows.append([name + label, args.clients, args.requests / seconds, answered / seconds,
                     float(np.percentile(latency, 50) * 1000), float(np.percentile(latency, 99) * 1000),
                     clips / max(batches, 1), per_batch])
        data[f"max_batch_{max_batch}{suffix}"] = {
            "requests_per_s": args.requests / seconds, "clips_per_s": answered / seconds,
            "p50_ms": float(np.percentile(latency, 50) * 1000), "p99_ms": float(np.percentile(latency, 99) * 1000),
            "mean_batch": clips / max(batches, 1), "requests_per_batch": per_batch}


if __name__ == "__main__":
    main()
