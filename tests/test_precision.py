"""`--precision`: fp32 by default on the CPU, bf16 autocast on the CPU when asked (checked against PyTorch's own
autocast), the warning on a CPU without native bf16, the kernels oneDNN reports, and int8 asked of plain weights."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

from c3dnet import device as device_module
from c3dnet.cli import main
from c3dnet.commands.common import add_precision_arguments
from c3dnet.data.transforms import normalize
from c3dnet.engine.testing import TestOptions
from c3dnet.errors import ConfigError
from c3dnet.inference.backends import as_backend, load_backend, precision_of, resolve_precision
from c3dnet.model import C3D
from c3dnet.serve.config import ServeConfig
from c3dnet.weights import save_model
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model_and_clips() -> tuple[C3D, torch.Tensor]:
    torch.manual_seed(0)
    model = C3D(tiny_config(num_classes=5)).eval()
    c = model.config
    clips = torch.randint(0, 256, (3, 3, c.clip_len, c.crop_size, c.crop_size), dtype=torch.uint8)
    return model, clips


def test_the_defaults_keep_numerics_and_the_flags_parse():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32"
    assert precision_of("auto", amp=False) == "fp32" and precision_of("bf16", amp=False) == "bf16"
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, int8, got 'fp16'"):
        resolve_precision("fp16", cpu)
    parser = argparse.ArgumentParser()
    add_precision_arguments(parser)
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--fp32"]).precision == "fp32"  # the old spelling
    assert parser.parse_args(["--precision", "int8"]).precision == "int8"
    with pytest.raises(ConfigError, match="precision must be one of"):
        TestOptions(precision="int4")
    with pytest.raises(ConfigError, match="--precision must be one of"):
        ServeConfig(precision="half")
    assert ServeConfig(amp=False).backend_precision == "fp32" and ServeConfig(precision="bf16").backend_precision \
        == "bf16"


def test_cpu_bf16_is_pytorch_autocast_and_fp32_is_untouched(model_and_clips):
    model, clips = model_and_clips
    x = normalize(clips, model.preprocess)
    with torch.inference_mode():
        expected_fp32 = model.forward_features(x).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16 = model.forward_features(x).float().numpy()
    fp32 = as_backend(model, "cpu", "auto")
    bf16 = as_backend(model, "cpu", "bf16")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    got_fp32 = fp32.submit(clips, "fc7").result()
    got_bf16 = bf16.submit(clips, "fc7").result()
    scale = np.abs(expected_fp32).max()
    np.testing.assert_allclose(got_fp32, expected_fp32, rtol=0, atol=1e-5 * scale)
    # bf16 keeps 8 bits of mantissa: the rows differ from fp32 (autocast ran) by a few 1e-3 of their scale
    assert 1e-4 < np.abs(got_bf16 - expected_fp32).max() / scale < 3e-2
    np.testing.assert_allclose(got_bf16, expected_bf16, rtol=0, atol=2e-2 * scale)


def test_the_first_cpu_batch_logs_onednn_kernels(model_and_clips, caplog):
    model, clips = model_and_clips
    backend = as_backend(model, "cpu", "bf16")
    with caplog.at_level(logging.INFO, logger="c3dnet.inference.backends"):
        backend.submit(clips, "logits").result()
    kernels = backend.describe()["kernels"]
    # oneDNN ran the convolutions: 8 of them in C3D, whichever kernel this CPU has
    assert sum(n for name, n in kernels.items() if name.startswith("convolution ")) == 8
    if device_module.cpu_bf16_isa() is not None:  # native bf16: AMX or AVX512-BF16 kernels
        assert any("amx" in name or "bf16" in name for name in kernels), kernels
    assert "PyTorch bf16 on the CPU: convolution" in caplog.text


def test_onednn_verbose_lines_are_parsed_by_hand():
    text = ("onednn_verbose,v1,info,oneDNN v3.9.1 (commit abc)\n"
            "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with bfloat16\n"
            "a line of the program's own\n"
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward,...,1.5\n"
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward,...,1.2\n"
            "onednn_verbose,v1,primitive,exec,cpu,reorder,simple:any,undef,...,0.1\n")
    report: dict = {"kernels": {}}
    others = device_module.parse_onednn_verbose(text, report)
    assert others == "a line of the program's own\n"  # written back to stdout
    assert report == {"kernels": {"convolution brg_conv_fwd:avx512_core_bf16": 2}, "onednn": "v3.9.1",
                      "isa": "Intel AVX-512 with bfloat16"}


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_f"}))
    assert device_module.cpu_bf16_isa() is None and device_module.cpu_int8_isa() is None
    with caplog.at_level(logging.WARNING, logger="c3dnet.device"):
        assert device_module.check_cpu_bf16.__wrapped__() is False
    assert "no native bf16 instructions" in caplog.text and "slower than fp32" in caplog.text
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx512_bf16", "avx512_vnni"}))
    assert device_module.cpu_bf16_isa() == "AVX512-BF16" and device_module.cpu_int8_isa() == "AVX512-VNNI"


def test_int8_with_plain_weights_names_c3d_quantize(model_and_clips, tmp_path, capsys):
    model, _ = model_and_clips
    weights = tmp_path / "w.safetensors"
    save_model(model, weights)
    with pytest.raises(ConfigError, match="c3d quantize --weights W --calib VIDEOS --out DIR"):
        load_backend(str(weights), "cpu", "int8")
    with pytest.raises(ConfigError, match="c3d quantize"):
        as_backend(model, "cpu", "int8")
    video = tmp_path / "v.avi"
    from tests.media import write_index_video

    write_index_video(video, 20, height=48, width=64)
    assert main(["predict", "--weights", str(weights), "--precision", "int8", str(video)]) == 2
    err = capsys.readouterr().err
    assert "--precision int8 runs an int8 OpenVINO model" in err and "c3d quantize" in err and len(
        err.strip().splitlines()) == 1
