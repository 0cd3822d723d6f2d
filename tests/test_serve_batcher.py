"""The model thread of `c3d serve` (`serve.batcher.DynamicBatcher`) in-process: every request gets its own rows
back, whatever batches its clips were mixed into, for PyTorch and ONNX models; cancelled chunks are dropped."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from c3dnet.export import OnnxC3D, export_onnx
from c3dnet.inference.backends import PendingRows, TorchBackend
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.inference.runner import ClipRunner
from c3dnet.model import C3D
from c3dnet.serve.batcher import Cancelled, DynamicBatcher
from c3dnet.serve.fairness import FairSlots, RequestGuard
from c3dnet.serve.jobs import FeatureOptions, Job, Limits, features_job
from c3dnet.serve.uploads import Upload
from tests.conftest import tiny_config
from tests.serving import NAMES, PRE, noise_video


@pytest.fixture
def model():
    return C3D(tiny_config(), preprocess=PRE, class_names=NAMES).eval()


def _clips(seed: int, n: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, 8, 32, 32), dtype=np.uint8))


def test_concurrent_requests_get_their_own_rows(model):
    batches = []
    batcher = DynamicBatcher(model, "cpu", max_batch=8, max_queue=16, max_wait_s=0.02,
                             on_batch=lambda size, requests, s: batches.append((size, requests)))
    # 1 to 11 clips (more than a batch: split), two outputs (never in one batch)
    requests = [(seed, 1 + (3 * seed) % 11, "logits" if seed % 3 else "fc6") for seed in range(16)]
    got: dict[int, np.ndarray] = {}
    try:
        def client(seed, n, output):
            got[seed] = batcher.submit(_clips(seed, n), output, threading.Event())  # an event per request

        threads = [threading.Thread(target=client, args=r) for r in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    for seed, n, output in requests:
        expected = ClipRunner(model, output)(_clips(seed, n))
        assert got[seed].shape == expected.shape
        # batches of other sizes round differently: equal to 1e-5 of the rows' scale
        np.testing.assert_allclose(got[seed], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert sum(size for size, _ in batches) == sum(n for _, n, _ in requests)
    assert max(size for size, _ in batches) <= 8
    assert max(r for _, r in batches) > 1  # some forward passes served several requests


def test_cancelled_chunks_are_dropped(model):
    batcher = DynamicBatcher(model, "cpu", max_batch=2, max_queue=4)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(Cancelled):
            batcher.submit(_clips(0, 3), "fc6", cancel)
        assert batcher.submit(_clips(1, 3), "fc6").shape == (3, 32)  # the thread goes on
    finally:
        batcher.close()
    with pytest.raises(Cancelled, match="shutting down"):
        batcher.submit(_clips(2, 1), "fc6")


def test_model_thread_drops_chunks_cancelled_while_queued(model):
    """A chunk queued behind a running forward pass, whose request then goes away, never reaches the model: the
    model thread drops it (its rows future is cancelled) and the queue empties."""
    entered, go, sizes = threading.Event(), threading.Event(), []

    class Blocking(TorchBackend):  # fc6 held until the second chunk is queued and cancelled
        def submit(self, clips, output, preprocess=None):
            sizes.append(len(clips))
            entered.set()
            assert go.wait(10)
            return PendingRows(np.zeros((len(clips), 32), dtype=np.float32))

    batcher = DynamicBatcher(Blocking(model), max_batch=4, max_queue=8, max_wait_s=0.001)
    try:
        first = batcher.enqueue(_clips(0, 1), "fc6")
        assert entered.wait(10)
        cancel = threading.Event()
        (queued,) = batcher.enqueue(_clips(1, 2), "fc6", cancel)
        assert batcher.queued == 2
        cancel.set()
        go.set()
        assert batcher.gather(first).shape == (1, 32)
        with pytest.raises(Cancelled):
            batcher.gather([queued])  # no cancel of its own here: the model thread's cancellation is what ends it
        assert queued.rows.cancelled() and batcher.queued == 0
        assert batcher.submit(_clips(2, 3), "fc6").shape == (3, 32)  # the thread goes on
        assert sizes == [1, 3]  # the cancelled chunk's 2 clips never ran
    finally:
        go.set()
        batcher.close()


def _features(batcher, video, options, dim):
    with RequestGuard(FairSlots(1), threading.Event(), None, video.name) as guard:
        return features_job(Job(batcher, Upload(video, video.name), Limits(), guard), options, dim).rows


def test_onnx_model_serves_every_layer(model, tmp_path):
    export_onnx(model, tmp_path / "m.onnx")
    video = noise_video(tmp_path / "v.avi", 30)
    onnx = DynamicBatcher(OnnxC3D(tmp_path / "m.onnx"), "cpu", max_batch=4)
    torch_ = DynamicBatcher(model, "cpu", max_batch=4)
    try:
        for layer in ("fc6", "fc7", "pool5"):
            options = FeatureOptions(FeatureRecipe(layer, stride=8))
            dim = model.feature_dims[layer]
            a = _features(onnx, video, options, dim)
            b = _features(torch_, video, options, dim)
            assert a.shape == b.shape == (3, {"fc6": 32, "fc7": 32, "pool5": 256}[layer])  # starts 0, 8, 16
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    finally:
        onnx.close()
        torch_.close()
