"""`c3d serve` under load, past capacity, and with requests that end early (real server, real HTTP).

- Load: 16 concurrent clients, 200 requests, 127.0.0.1 only: no 5xx, forward passes shared by requests, RSS
  growth bounded; p50/p99 latency, throughput and batch sizes are printed (pytest -s) and recorded.
- A tiny queue answers 503 with Retry-After; a client that disconnects stops its decoding; a request over
  --request-timeout ends with a JSON error and stops too.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.serving import Server, noise_video, tiny_weights, upload

LONG_FRAMES = 3000  # 2 minutes at 25 fps; stride 1 gives 2993 clips of 8 frames


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("load") / "w.safetensors")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return noise_video(tmp_path_factory.mktemp("long") / "long.avi", LONG_FRAMES, height=16, width=16)


@pytest.mark.slow
def test_load_16_clients_200_requests(weights, tmp_path, record_property):
    video = noise_video(tmp_path / "v.avi", 24, height=32, width=40)
    server = Server(weights, tmp_path / "server")
    try:
        urls = [f"{server.url}/v1/predict?stride=8", f"{server.url}/v1/features?stride=8"]  # alternately
        assert [upload(url, video).status_code for url in urls] == [200, 200]  # warm: first calls' allocations
        rss_before = server.rss_mb()
        batches0, clips0 = server.metric("c3d_batch_size_count"), server.metric("c3d_batch_size_sum")
        requests0 = server.metric("c3d_batch_requests_sum")
        data = video.read_bytes()

        def one(i: int) -> tuple[int, float]:
            tick = time.perf_counter()
            r = clients[i % 16].post(urls[i % 2], files={"file": ("v.avi", data)}, timeout=60)
            return r.status_code, time.perf_counter() - tick

        clients = [httpx.Client() for _ in range(16)]
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(200)))
        seconds = time.perf_counter() - start
        for c in clients:
            c.close()
        codes = [c for c, _ in results]
        latency = np.array([s for _, s in results])
        batches = server.metric("c3d_batch_size_count") - batches0
        clips = server.metric("c3d_batch_size_sum") - clips0
        shared = (server.metric("c3d_batch_requests_sum") - requests0) / batches
        growth = server.rss_mb() - rss_before
        summary = {"requests_per_s": 200 / seconds, "p50_s": float(np.percentile(latency, 50)),
                   "p99_s": float(np.percentile(latency, 99)), "mean_batch_clips": clips / batches,
                   "mean_requests_per_batch": shared, "rss_growth_mb": growth}
        for k, v in summary.items():
            record_property(k, round(v, 3))
        print("load:", ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
        assert codes == [200] * 200, {c: codes.count(c) for c in set(codes)}
        assert clips / batches > 1 and shared > 1, summary
        assert growth <= 200, summary
        assert server.uploads_left() == []
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tight(weights, tmp_path_factory):
    """A server with room for 2 requests, 4 queued clips, batches of 2 and 2 s per request."""
    s = Server(weights, tmp_path_factory.mktemp("tight"), "--max-pending", "2", "--max-queue", "4",
               "--max-batch", "2", "--request-timeout", "2", "--decode-workers", "2")
    yield s
    s.stop()
    assert s.folders() == []


def _idle(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.metric("c3d_requests_in_progress") > 0:
        assert time.monotonic() < deadline, "requests still in progress"
        time.sleep(0.05)


def test_past_capacity_503_with_retry_after(tight, long_video):
    answers = []

    def client():
        answers.append(upload(f"{tight.url}/v1/features?stride=1", long_video, timeout=30))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in answers if r.status_code == 503]
    assert len(busy) >= 4, [r.status_code for r in answers]  # 2 admitted at most
    for r in busy:
        assert int(r.headers["retry-after"]) >= 1
        assert "busy" in r.json()["error"] and "Retry-After" in r.json()["error"]
    assert tight.metric("c3d_requests_rejected_total") >= len(busy)
    _idle(tight)
    assert httpx.get(f"{tight.url}/healthz").status_code == 200
    assert tight.uploads_left() == []


def _multipart(path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: video/x-msvideo\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_disconnect_stops_decoding(tight, long_video):
    _idle(tight)
    decoded0 = tight.metric("c3d_clips_decoded_total")
    cancelled0 = tight.metric("c3d_requests_cancelled_total", reason="disconnect")
    body, content_type = _multipart(long_video)
    conn = http.client.HTTPConnection("127.0.0.1", tight.port, timeout=10)
    conn.request("POST", "/v1/features?stride=1", body=body, headers={"Content-Type": content_type})
    time.sleep(0.4)  # decoding has started
    conn.sock.shutdown(2)
    conn.close()
    _idle(tight)
    assert tight.metric("c3d_requests_cancelled_total", reason="disconnect") == cancelled0 + 1
    decoded = tight.metric("c3d_clips_decoded_total") - decoded0
    assert 0 < decoded < LONG_FRAMES - 7, f"decoded {decoded} clips of {LONG_FRAMES - 7}"
    time.sleep(0.5)
    assert tight.metric("c3d_clips_decoded_total") - decoded0 == decoded  # and nothing more since
    assert tight.uploads_left() == []


def test_disconnect_during_upload(tight, long_video):
    """A client that goes away halfway through its upload: the part on disk is removed, and the request counts as
    a disconnect (499), not as a server error."""
    _idle(tight)
    cancelled0 = tight.metric("c3d_requests_cancelled_total", reason="disconnect")
    body, content_type = _multipart(long_video)
    conn = http.client.HTTPConnection("127.0.0.1", tight.port, timeout=10)
    conn.putrequest("POST", "/v1/features")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    deadline = time.monotonic() + 10
    while not tight.uploads_left():  # the part received is on disk
        assert time.monotonic() < deadline, "the upload never reached the server's folder"
        time.sleep(0.02)
    conn.sock.shutdown(2)
    conn.close()
    _idle(tight)
    assert tight.metric("c3d_requests_cancelled_total", reason="disconnect") == cancelled0 + 1
    assert tight.metric("c3d_requests_total", endpoint="features", code="500") == 0
    assert tight.uploads_left() == []


def test_request_timeout_is_a_json_error(tight, long_video):
    _idle(tight)
    decoded0 = tight.metric("c3d_clips_decoded_total")
    tick = time.perf_counter()
    r = upload(f"{tight.url}/v1/features?stride=1", long_video, timeout=30)
    assert r.status_code == 504, r.text
    assert "--request-timeout" in r.json()["error"] and "long.avi" in r.json()["error"]
    assert time.perf_counter() - tick < 4
    _idle(tight)
    assert tight.metric("c3d_requests_cancelled_total", reason="timeout") >= 1
    assert tight.metric("c3d_clips_decoded_total") - decoded0 < LONG_FRAMES - 7
    assert tight.uploads_left() == []
    assert httpx.get(f"{tight.url}/healthz").status_code == 200
