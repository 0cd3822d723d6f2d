from __future__ import annotations

import pytest
import torch

from c3dnet.model import C3D, TEMPORAL_DEPTHS, C3DConfig, build_model, count_parameters
from tests.conftest import tiny_config


def test_reference_parameter_count() -> None:
    assert count_parameters(C3D(C3DConfig(num_classes=101))) == 78_409_573


def test_reference_layer_shapes() -> None:
    model = C3D(C3DConfig(num_classes=101))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1a.weight"] == (64, 3, 3, 3, 3)
    assert shapes["conv3b.weight"] == (256, 256, 3, 3, 3)
    assert shapes["conv5b.weight"] == (512, 512, 3, 3, 3)
    assert shapes["fc6.weight"] == (4096, 8192)
    assert shapes["fc7.weight"] == (4096, 4096)
    assert shapes["head.weight"] == (101, 4096)
    assert model.feature_dims == {"pool5": 8192, "fc6": 4096, "fc7": 4096}


@pytest.mark.parametrize("variant", sorted(TEMPORAL_DEPTHS))
@pytest.mark.parametrize("width_mult", [0.125, 0.25])
def test_variant_shapes(variant: str, width_mult: float) -> None:
    model = build_model(variant, num_classes=7, width_mult=width_mult, fc_dim=24, clip_len=16, crop_size=48).eval()
    x = torch.randn(2, 3, 16, 48, 48)
    assert model(x).shape == (2, 7)
    for layer, dim in model.feature_dims.items():
        assert model.forward_features(x, layer).shape == (2, dim)
    depths = TEMPORAL_DEPTHS[variant]
    assert model.conv1a.weight.shape[2] == depths[0]
    assert model.conv5b.weight.shape[2] == depths[4]
    assert model.conv1a.weight.shape[0] == round(64 * width_mult)


def test_forward_is_features_then_head(tiny_model: C3D) -> None:
    x = torch.randn(3, 3, 8, 32, 32)
    fc7 = tiny_model.forward_features(x, "fc7")
    torch.testing.assert_close(tiny_model.forward_head(fc7), tiny_model(x))
    fc6 = tiny_model.forward_features(x, "fc6")
    assert (fc6 >= 0).all() and (fc7 >= 0).all()  # both after ReLU
    torch.testing.assert_close(torch.relu(tiny_model.fc7(fc6)), fc7)
    torch.testing.assert_close(tiny_model.forward_head(fc7, pre_logits=True), fc7)


def test_reset_classifier_keeps_backbone(tiny_model: C3D) -> None:
    x = torch.randn(2, 3, 8, 32, 32)
    before = tiny_model.forward_features(x)
    tiny_model.reset_classifier(11, [f"c{i}" for i in range(11)])
    assert tiny_model(x).shape == (2, 11)
    assert tiny_model.config.num_classes == 11 and tiny_model.class_names[3] == "c3"
    torch.testing.assert_close(tiny_model.forward_features(x), before)
    assert abs(tiny_model.head.weight.std().item() - 0.01) < 0.005


def test_bad_input_shape_message(tiny_model: C3D) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 32, 32\).*got \(2, 8, 3, 32, 32\)"):
        tiny_model(torch.randn(2, 8, 3, 32, 32))


def test_2d_variant_is_blind_to_frame_order() -> None:
    # Depth-1 kernels see one frame at a time and temporal pooling pairs frames symmetrically, so reversing
    # a clip cannot change the output: exactly what "2D convolutions lose temporal information" means.
    x = torch.randn(4, 3, 16, 32, 32)
    reversed_x = x.flip(2)
    net2d = C3D(tiny_config(temporal_depths=(1, 1, 1, 1, 1), clip_len=16)).eval()
    torch.testing.assert_close(net2d(x), net2d(reversed_x), rtol=1e-5, atol=1e-6)
    net3d = C3D(tiny_config(clip_len=16)).eval()
    assert (net3d(x) - net3d(reversed_x)).abs().max() > 1e-3


def _pool5_by_hand(x: torch.Tensor, windows: list[tuple[int, int]]) -> torch.Tensor:
    # x: (C, 2, H, W) -> max over time, then over each (row window) x (col window).
    xt = x.amax(dim=1)
    out = torch.empty(x.shape[0], len(windows), len(windows))
    for i, (r0, r1) in enumerate(windows):
        for j, (c0, c1) in enumerate(windows):
            out[:, i, j] = xt[:, max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1].amax(dim=(1, 2))
    return out


def test_caffe_pool5_windows_differ_from_padded() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 4, 2, 7, 7)
    caffe = C3D(tiny_config(pool5="caffe", clip_len=16))
    padded = C3D(tiny_config(pool5="padded", clip_len=16))
    got_caffe = caffe.pool(x, 4)[0, :, 0]
    got_padded = padded.pool(x, 4)[0, :, 0]
    # Caffe (ceil mode): [0,1] [2,3] [4,5] [6]; padded ports: [-1,0] [1,2] [3,4] [5,6].
    torch.testing.assert_close(got_caffe, _pool5_by_hand(x[0], [(0, 1), (2, 3), (4, 5), (6, 6)]))
    torch.testing.assert_close(got_padded, _pool5_by_hand(x[0], [(-1, 0), (1, 2), (3, 4), (5, 6)]))
    assert not torch.equal(got_caffe, got_padded)


def test_reference_pool5_sizes_match_in_both_modes() -> None:
    for mode in ("padded", "caffe"):
        model = C3D(C3DConfig(num_classes=2, width_mult=1 / 64, fc_dim=8, pool5=mode))
        assert model.feature_dims["pool5"] == 8 * 1 * 4 * 4


def test_config_round_trip_and_validation() -> None:
    cfg = C3DConfig.variant("increasing", num_classes=3, width_mult=0.5)
    assert C3DConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="odd"):
        C3DConfig(temporal_depths=(3, 3, 2, 3, 3))
    with pytest.raises(ValueError, match="unknown variant"):
        C3DConfig.variant("d9")
    with pytest.raises(ValueError, match="unknown C3D config fields"):
        C3DConfig.from_dict({"num_clases": 3})


def test_multiply_adds_match_reference_cost() -> None:
    from c3dnet.model import multiply_adds

    assert abs(multiply_adds(C3DConfig()) / 1e9 - 38.6) < 0.1  # REFERENCE.md: 38.6 G multiply-adds per clip
    # Depth-1 convs cost a third of depth-3 convs; the fc layers are unchanged.
    full, flat = multiply_adds(C3DConfig()), multiply_adds(C3DConfig.variant("d1"))
    fc = 8192 * 4096 + 4096 * 4096 + 4096 * 101
    assert flat - fc == (full - fc) // 3
