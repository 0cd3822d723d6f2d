"""`c3d serve` attacked: uploads that name other files, tiny files with huge frames, expensive videos, slow
clients, other sites' pages, missing keys. A real server over real HTTP; the hostile files are made by FFmpeg.

Each attack must be refused (or served fairly) without a traceback in the log, with the server's memory bounded,
and with a normal request still answered while it goes on.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from c3dnet.errors import ConfigError
from tests.oracle import CORPUS_BY_NAME, CorpusEntry, corpus_path, require
from tests.serving import Server, noise_video, tiny_weights, upload

_FF = ("ffmpeg", "-v", "error", "-nostdin", "-y")
# The hostile uploads, smaller: long 1080p H.264 of a flat picture (a few MB, seconds of CPU to decode),
# the same as MPEG-4 in AVI (counted by decoding it), and a 3 kB video of 8192x16 frames.
HOSTILE = CorpusEntry("hostile_1080p_h264", "mp4", "mp4", "h264", False, steps=(
    (*_FF, "-f", "lavfi", "-i", "color=c=gray:size=1920x1080:rate=25", "-frames:v", "3000", "-c:v", "libx264",
     "-preset", "ultrafast", "-g", "600", "{out}"),))
HOSTILE_AVI = CorpusEntry("hostile_1080p_mpeg4_avi", "avi", "avi", "mpeg4", False, steps=(
    (*_FF, "-f", "lavfi", "-i", "color=c=gray:size=1920x1080:rate=25", "-frames:v", "3000", "-c:v", "mpeg4",
     "-q:v", "31", "-g", "600", "{out}"),))
WIDE = CorpusEntry("wide_8192x16", "mkv", "matroska", "h264", False, steps=(
    (*_FF, "-f", "lavfi", "-i", "color=c=red:size=8192x16:rate=25", "-frames:v", "50", "-c:v", "libx264",
     "-preset", "ultrafast", "{out}"),))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("hostile") / "w.safetensors")


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    s = Server(weights, tmp_path_factory.mktemp("server"), "--decode-workers", "1", "--header-timeout", "1",
               "--max-response-mb", "1", "--request-timeout", "120")
    yield s
    assert s.stop() == 130, s.log()
    assert "Traceback" not in s.log(), s.log()
    assert s.folders() == []


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return noise_video(tmp_path_factory.mktemp("small") / "small.avi", 24, height=32, width=40)


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A video on the server's own disk that no client sent."""
    path = tmp_path_factory.mktemp("private") / "secret.ts"
    subprocess.run([require("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25",
                    "-frames:v", "40", "-c:v", "libx264", str(path)], check=True, timeout=60)
    return path


def _references(secret: Path) -> dict[str, bytes]:
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{}\n#EXT-X-ENDLIST\n"
    return {
        "playlist.m3u8": hls.format(secret).encode(),
        "url.m3u8": hls.format(f"file://{secret}").encode(),
        "playlist.mp4": hls.format(secret).encode(),
        "playlist.ts": hls.format(secret).encode(),
        "list.ffconcat": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        "list.txt": f"file '{secret}'\n".encode(),
        "img%03d.jpg": b"\xff\xd8\xff\xe0" + bytes(200),
    }


def test_uploads_that_name_other_files_are_refused(server, secret):
    for name, data in _references(secret).items():
        for endpoint in ("features", "predict?thumbnails=4"):
            r = upload(f"{server.url}/v1/{endpoint}", data=data, name=name)
            assert r.status_code == 415, (name, endpoint, r.status_code, r.text[:300])
            assert "not a video file this server opens" in r.json()["error"] and "features" not in r.json()
            assert str(secret) not in r.text


def test_content_and_name_must_agree(server):
    mkv = corpus_path(CORPUS_BY_NAME["h264_bf_g12_mkv"])
    r = upload(f"{server.url}/v1/features", mkv, name="clip.mp4")
    assert r.status_code == 415 and "its content is Matroska/WebM but its name says MP4" in r.json()["error"]
    assert upload(f"{server.url}/v1/features", mkv, name="clip.mkv").status_code == 200


def test_huge_frames_are_refused_from_the_header(server):
    wide = corpus_path(WIDE)
    assert wide.stat().st_size < 5000
    before = server.rss_mb()
    for endpoint in ("features", "predict?thumbnails=4"):
        r = upload(f"{server.url}/v1/{endpoint}", wide)
        assert r.status_code == 413 and "8192x16 have an aspect ratio past this limit of 4:1" in r.json()["error"]
    assert server.rss_mb() < before + 50


def test_answers_past_the_size_limit_are_refused_before_work(server, small):
    url = f"{server.url}/v1/features?stride=1&segments=5000"
    r = upload(url, small)
    assert r.status_code == 413 and "--max-response-mb" in r.json()["error"], r.text
    npy = upload(url, small, headers={"Accept": "application/x-npy"})  # 4 bytes a value: within the limit
    assert npy.status_code == 200 and npy.headers["X-C3D-Shape"] == "5000,32"
    r = upload(f"{server.url}/v1/features?segments=10001", small)
    assert r.status_code == 422 and "segments" in r.json()["error"]


def test_unknown_options_and_fields_are_named(server, small):
    r = upload(f"{server.url}/v1/features?layr=fc7&stride=8", small)
    assert r.status_code == 422 and "unknown query parameter layr" in r.json()["error"]
    assert "layer" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/predict", files={"video": ("v.avi", small.read_bytes())}, timeout=30)
    assert r.status_code == 400 and "as the field 'video'" in r.json()["error"] and "`file`" in r.json()["error"]
    r = upload(f"{server.url}/v1/features?stride=8", small)
    assert r.status_code == 200 and r.json()["sample_fps"] is None


def _hostile_request(server: Server, path: Path, results: list, endpoint: str = "predict") -> None:
    tick = time.monotonic()
    r = upload(f"{server.url}/v1/{endpoint}", path, timeout=300)
    results.append((r.status_code, time.monotonic() - tick))


def test_a_normal_request_is_served_while_two_hostile_ones_run(server, small):
    """One decoding slot (--decode-workers 1), two long 1080p uploads holding it in turn: a small request sent
    after them is answered within seconds, not after them."""
    hostile = corpus_path(HOSTILE)
    results: list = []
    threads = [threading.Thread(target=_hostile_request, args=(server, hostile, results)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # both are decoding
    tick = time.monotonic()
    r = upload(f"{server.url}/v1/predict", small, timeout=120)
    normal = time.monotonic() - tick
    still_running = sum(t.is_alive() for t in threads)
    peak = server.rss_mb()
    for t in threads:
        t.join(300)
    assert r.status_code == 200, r.text
    assert normal < 10 and still_running == 2, (normal, still_running, results)
    assert [code for code, _ in results] == [200, 200]
    assert min(seconds for _, seconds in results) > normal + 2  # the hostile ones were still working
    assert peak < 1500, f"{peak:.0f} MB"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def _send_and_leave(url: str, path: Path, after_s: float) -> None:
    """POST `path` with a raw socket, then close it `after_s` seconds later without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    data = path.read_bytes()
    boundary = "c3dboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
                  f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(after_s)


def test_a_client_that_leaves_stops_the_counting_pass(server):
    """An AVI is counted by decoding it all before any clip is cut; a client leaving stops that pass too."""
    avi = corpus_path(HOSTILE_AVI)
    _send_and_leave(server.url, avi, 1.0)
    time.sleep(0.5)  # the disconnect is seen, the decoding stops within a frame
    cpu = _cpu_seconds(server.pid)
    time.sleep(2.0)
    assert _cpu_seconds(server.pid) - cpu < 0.5, "decoding went on after the client left"
    deadline = time.monotonic() + 10
    while server.metric("c3d_requests_in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("c3d_requests_in_progress") == 0 and server.uploads_left() == []


def test_slow_headers_are_closed(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        tick = time.monotonic()
        for _ in range(5):  # a byte every 0.4 s: the headers never end
            s.sendall(b"X")
            time.sleep(0.4)
            if time.monotonic() - tick > 1.5:
                break
        try:
            closed = s.recv(1024) == b""
        except ConnectionResetError:
            closed = True
    assert closed and time.monotonic() - tick < 5


def test_a_slow_upload_is_refused(server, small):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(f"POST /v1/features HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
                  "boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                  "name=\"file\"; filename=\"v.avi\"\r\n\r\n".encode())
        tick = time.monotonic()
        answer = b""
        while time.monotonic() - tick < 10 and b"\r\n\r\n" not in answer:
            try:
                s.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            s.settimeout(0.3)
            try:
                answer += s.recv(4096)
            except TimeoutError:
                pass
        s.settimeout(5)
        while b"}" not in answer.partition(b"\r\n\r\n")[2]:  # the JSON body after the headers
            answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - tick < 5
    assert b"--min-upload-kbps" in answer or b"--header-timeout" in answer
    assert upload(f"{server.url}/v1/features", small).status_code == 200


def test_host_and_origin_are_checked(server):
    port = server.port
    r = httpx.get(f"{server.url}/v1/model", headers={"Host": f"attacker.example:{port}"})
    assert r.status_code == 421 and "--allowed-hosts" in r.json()["error"]
    assert httpx.get(f"{server.url}/v1/model", headers={"Host": f"localhost:{port}"}).status_code == 200
    r = httpx.get(f"{server.url}/v1/model", headers={"Origin": "https://attacker.example"})
    assert r.status_code == 403 and "--cors-origin" in r.json()["error"]
    same = httpx.get(f"{server.url}/v1/model", headers={"Origin": server.url})
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers  # CORS stays off


def test_api_key(weights, tmp_path, small):
    key = "k" * 8 + "0123456789abcdef"
    (tmp_path / "key").write_text(key + "\n")
    s = Server(weights, tmp_path / "server", "--api-key-file", str(tmp_path / "key"),
               "--cors-origin", "https://app.example")
    try:
        assert httpx.get(f"{s.url}/healthz").status_code == 200 and httpx.get(f"{s.url}/").status_code == 200
        r = httpx.get(f"{s.url}/v1/model")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert httpx.get(f"{s.url}/v1/model", headers={"Authorization": "Bearer wrong-key-wrong-key"}).status_code \
            == 401
        ok = httpx.get(f"{s.url}/v1/model", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["serving"]["api_key"] is True and key not in ok.text
        r = upload(f"{s.url}/v1/features", small, headers={"X-API-Key": key, "Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        assert s.stop() == 130
    assert key not in s.log()


def test_cpu_budget(weights, tmp_path):
    s = Server(weights, tmp_path / "server", "--max-cpu-seconds", "1")
    try:
        tick = time.monotonic()
        r = upload(f"{s.url}/v1/predict", corpus_path(HOSTILE), timeout=120)
        assert r.status_code == 413 and "--max-cpu-seconds" in r.json()["error"], r.text
        assert time.monotonic() - tick < 10
    finally:
        s.stop()


def test_bad_settings_are_refused_from_python_as_from_the_cli(weights, capsys):
    from c3dnet.cli import main
    from c3dnet.serve import ServeConfig, create_app
    from c3dnet.weights import load_model

    for kwargs, flags, words in [({"max_batch": 0}, ["--max-batch", "0"], "--max-batch must be >= 1"),
                                 ({"max_queue": 2, "max_batch": 4}, ["--max-queue", "2", "--max-batch", "4"],
                                  "--max-queue (2) must hold at least one batch"),
                                 ({"max_aspect": 0.5}, ["--max-aspect", "0.5"], "--max-aspect must be >= 1")]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            create_app(load_model(weights), "cpu", ServeConfig(**kwargs))
        capsys.readouterr()
        assert main(["serve", "--weights", str(weights), "--device", "cpu", *flags]) != 0
        assert f"c3d serve: error: {words}" in capsys.readouterr().err
