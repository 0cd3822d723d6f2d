"""The model at each `--precision` as the commands run it, for the benchmarks' --precision lists.

`backend_for(model, device, "int8")` quantizes `model` to OpenVINO as `c3d quantize` does (NNCF), calibrated on 8
random clips: random weights and random clips, so only the speed of the int8 rows means something (the accuracy is
`c3d quantize`'s to measure, on real videos). The other precisions are `as_backend(model, device, precision)`.
"""

from __future__ import annotations

import torch

from c3dnet.data.transforms import normalize
from c3dnet.inference.backends import Backend, as_backend
from c3dnet.model import C3D

CALIBRATION_CLIPS = 8


def backend_for(model: C3D, device: torch.device | str, precision: str) -> Backend:
    """`model` at `precision` ("auto", "fp32", "bf16" or "int8")."""
    if precision != "int8":
        return as_backend(model, device, precision)
    from c3dnet.quantize import quantize_openvino

    pre = model.preprocess
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (CALIBRATION_CLIPS, 3, pre.clip_len, pre.crop_size, pre.crop_size),
                          dtype=torch.uint8, generator=g)
    return as_backend(quantize_openvino(model, normalize(clips, pre)), device, "int8")


def parse_precisions(text: str) -> list[str]:
    """A comma-separated --precision list, checked."""
    from c3dnet.inference.backends import check_precision

    return [check_precision(p.strip()) for p in text.split(",") if p.strip()]
