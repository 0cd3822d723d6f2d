"""Device helpers and the resumable distributed sampler."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from c3dnet import device as device_mod
from c3dnet.data.epoch_order import EpochBatches, ResumableSampler
from c3dnet.device import inference_context, select_device, to_input
from c3dnet.errors import ConfigError
from c3dnet.inference.backends import Compiled
from c3dnet.preprocess import Preprocess


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu or cuda"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use --device cpu"):
            select_device("cuda")


def test_warns_on_torch_2_9_0(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("c3dnet")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(torch, "__version__", "2.9.0+cu128")
    with caplog.at_level(logging.WARNING, logger="c3dnet"):
        device_mod.check_torch_version()
    assert "PyTorch 2.9.0" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch, "__version__", "2.9.1+cu128")
    device_mod.check_torch_version()
    assert "PyTorch 2.9.0" not in caplog.text


def test_to_input_normalises_on_the_device() -> None:
    p = Preprocess(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), channel_order="BGR", clip_len=2, crop_size=16)
    clips = torch.zeros(1, 3, 2, 2, 2, dtype=torch.uint8)  # (N, C=RGB, T, H, W)
    clips[:, 0], clips[:, 1], clips[:, 2] = 50, 60, 70
    x = to_input(clips, p, torch.device("cpu"))
    assert x.dtype == torch.float32
    # BGR order: channel 0 is blue (70), minus the first mean (10), over the first std (2)
    assert x[0, :, 0, 0, 0].tolist() == pytest.approx([(70 - 10) / 2, (60 - 20) / 4, (50 - 30) / 5])
    with inference_context(torch.device("cpu")):
        assert torch.is_inference_mode_enabled()


def test_sampler_order_padding_and_skip() -> None:
    order = np.random.default_rng([3, 1]).permutation(5)  # seed 3, epoch 1
    samplers = [ResumableSampler(5, True, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in samplers:
        s.set_epoch(1)
    padded = np.concatenate([order, order[:1]])  # 5 -> 6 by repeating the first
    assert list(samplers[0]) == padded[0::2].tolist() and list(samplers[1]) == padded[1::2].tolist()
    assert len(samplers[0]) == len(samplers[1]) == 3
    samplers[1].set_epoch(1, skip=2)
    assert list(samplers[1]) == [int(padded[5])] and len(samplers[1]) == 1
    single = ResumableSampler(5, True, seed=3)
    single.set_epoch(2)
    assert list(single) == np.random.default_rng([3, 2]).permutation(5).tolist()
    assert list(ResumableSampler(4, False)) == [0, 1, 2, 3]


def test_epoch_batches_run_on_across_epochs_without_mixing_them() -> None:
    def epoch_order(epoch: int) -> list[int]:
        return np.random.default_rng([3, epoch]).permutation(7).tolist()

    batches = EpochBatches(ResumableSampler(7, True, seed=3), batch_size=3, drop_last=True, epochs=3)
    assert len(batches) == 2  # 7 samples -> 2 full batches per epoch; the 7th is dropped, not carried over
    expected = [[(e, i) for i in epoch_order(e)[lo:lo + 3]] for e in range(3) for lo in (0, 3)]
    assert list(batches) == expected
    batches.start(1, skip=3)  # resumed after epoch 1's first batch
    assert list(batches) == expected[3:]
    keep_last = EpochBatches(ResumableSampler(7, False), batch_size=3, drop_last=False, epochs=2)
    assert len(keep_last) == 3 and [len(b) for b in keep_last] == [3, 3, 1, 3, 3, 1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_prefetcher_hands_over_the_loader_batches_normalised_on_the_device(device: str) -> None:
    import time

    from c3dnet.engine.prefetch import Prefetcher

    p = Preprocess(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), clip_len=4, crop_size=8)
    pin = device == "cuda"
    batches = [(torch.randint(0, 256, (3, 1, 3, 4, 8, 8), dtype=torch.uint8), torch.tensor([b, 1, 2]),
                torch.arange(3)) for b in range(3)]

    def slow_feed():  # a loader that takes 30 ms a batch: the waits must account for it, where they happen
        for c, y, i in batches:
            time.sleep(0.03)
            yield (c.pin_memory() if pin else c, y.pin_memory() if pin else y, i)

    prefetcher = Prefetcher(slow_feed(), p, torch.device(device), channels_last=True)
    for k, (clips, labels, _) in enumerate(batches):
        x, y, wait = prefetcher.next()
        assert (wait >= 0.03) if k == 0 else (wait == 0.0)  # later batches were fetched during the step before
        ahead = prefetcher.prefetch()  # the next batch's copy starts before this one is used
        assert (ahead >= 0.03) if k < len(batches) - 1 else (ahead == 0.0)
        assert x.device.type == device and x.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(x.cpu(), to_input(clips.flatten(0, 1), p, torch.device("cpu")))
        assert y.cpu().tolist() == labels.tolist()
    with pytest.raises(RuntimeError, match="ran out of batches"):
        prefetcher.next()


def test_loader_workers_auto(monkeypatch) -> None:
    from c3dnet.device import loader_workers

    assert loader_workers(3, torch.device("cpu")) == 3 and loader_workers(0, torch.device("cuda")) == 0
    assert loader_workers("auto", torch.device("cpu")) == 1  # the model needs the cores
    monkeypatch.setattr(device_mod.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers("auto", torch.device("cuda")) == 14
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: four processes share the 16 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(None, torch.device("cuda")) == 2
    monkeypatch.setattr(device_mod.os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers("auto", torch.device("cuda")) == 16


class _Counting(torch.nn.Module):
    """A small conv net that counts its eager calls (a compiled graph does not run Python forward)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)
        self.eager_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.eager_calls += 1
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def test_compiled_pads_small_batches_and_runs_large_ones_eagerly() -> None:
    torch._dynamo.reset()
    module = _Counting().eval()
    net = Compiled(module, pad_batches=True)
    x = torch.randn(6, 3, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected = module(x)
        module.eager_calls = 0
        assert torch.allclose(net(x), expected, atol=1e-5)
        assert torch.allclose(net(x[:4]), expected[:4], atol=1e-5)  # padded to 6 rows: the same graph
        assert module.eager_calls == 0
        assert torch.allclose(net(torch.cat([x, x])), torch.cat([expected, expected]), atol=1e-5)
        assert module.eager_calls == 1  # 12 > 6 rows: eagerly, no recompile
    assert "_compiled" not in dict(net.named_modules()) and set(net.state_dict()) == \
        {f"eager.{k}" for k in module.state_dict()}


def _compile_failing_at(calls: list[int], monkeypatch) -> None:
    """torch.compile replaced by a 'compiled' function that raises at the given call numbers (1-based)."""
    def fake_compile(module, **_):
        count = [0]

        def run(*args):
            count[0] += 1
            if count[0] in calls:
                raise RuntimeError("no C++ compiler" if count[0] == 1 else "CUDA error: an illegal memory access")
            return module(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(logging.getLogger("c3dnet"), "propagate", True)


def test_compiled_falls_back_to_eager_on_a_failure_at_the_first_call(monkeypatch, caplog) -> None:
    _compile_failing_at([1], monkeypatch)
    module = _Counting().eval()
    net = Compiled(module, pad_batches=True)
    x = torch.randn(2, 3, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="c3dnet"), torch.inference_mode():
        assert torch.equal(net(x), module(x))
        assert torch.equal(net(x[:1]), module(x[:1]))
    assert net.failed
    assert "torch.compile failed (RuntimeError: no C++ compiler); running eagerly" in caplog.text


def test_compiled_raises_a_failure_after_the_first_call(monkeypatch, caplog) -> None:
    """Only the first call's failure is the compiler's; a later one is the model's and must not be hidden."""
    _compile_failing_at([2], monkeypatch)
    net = Compiled(_Counting().train())
    x = torch.randn(2, 3, 4, 8, 8)
    net(x)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        net(x)
    assert not net.failed and "running eagerly" not in caplog.text


def test_host_threads_for_gpu(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        device_mod.host_threads_for_gpu()
        assert torch.get_num_threads() == 2  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        device_mod.host_threads_for_gpu()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_select_device_changes_nothing_and_configure_for_cpu_neither(monkeypatch) -> None:
    """Selecting is pure; configuring for the CPU leaves threads and cudnn as they were."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    device = select_device("auto")
    assert torch.get_num_threads() == threads and torch.backends.cudnn.benchmark == benchmark
    if device.type == "cpu":
        assert device_mod.configure_for(device) == device
        assert torch.get_num_threads() == threads and torch.backends.cudnn.benchmark == benchmark
