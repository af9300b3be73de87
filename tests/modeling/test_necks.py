"""The paper's neck: widths, the top-down sum, P6, linearity, the registry and bad widths."""
import pytest
import torch
from detectron2.modeling import build_backbone

from fpn_plugin import NECK_REGISTRY, PyramidNeck

from helpers import hand_inputs, identity_neck


def test_top_down_is_nearest_upsample_plus_lateral():
    out = identity_neck().pyramid(hand_inputs())
    up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    c5 = hand_inputs()["res5"]
    assert torch.equal(out["p5"], c5)
    assert torch.equal(out["p4"], 4 + up(c5))
    assert torch.equal(out["p3"], 3 + 4 + up(up(c5)))
    assert torch.equal(out["p2"], 2 + 3 + 4 + up(up(up(c5))))
    assert out["p4"][0, 0, 0, 0] == 5 and out["p4"][0, 0, 3, 3] == 8  # 4 + C5's corners


def test_p6_is_p5_subsampled_by_two():
    out = identity_neck().pyramid(hand_inputs())
    assert out["p6"].shape[-2:] == (1, 1)
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])


def test_neck_is_affine_no_activation(make_cfg):
    """f(a*x) - f(0) == a * (f(x) - f(0)) for negative a too: no ReLU or other non-linearity."""
    neck = build_backbone(make_cfg())
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)) for n, m in neck.named_modules()
                   if not n.startswith("bottom_up"))
    shapes = neck.bottom_up.output_shape()
    x = {k: torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride) for k, s in shapes.items()}
    zero = neck.pyramid({k: torch.zeros_like(v) for k, v in x.items()})
    base = neck.pyramid(x)
    scaled = neck.pyramid({k: -2.5 * v for k, v in x.items()})
    for k in base:
        torch.testing.assert_close(scaled[k] - zero[k], -2.5 * (base[k] - zero[k]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (64, 96), (100, 150), (129, 31)])
def test_shapes_and_strides(make_cfg, hw):
    neck = build_backbone(make_cfg()).eval()
    assert neck.size_divisibility == 32
    h, w = (-(-s // 32) * 32 for s in hw)  # padded as ImageList pads
    with torch.no_grad():
        out = neck(torch.randn(1, 3, h, w))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, spec in neck.output_shape().items():
        assert spec.stride == 2 ** int(name[1]) and spec.channels == 256
        assert out[name].shape == (1, 256, -(-h // spec.stride), -(-w // spec.stride))


def test_separate_top_down_and_output_widths(make_cfg):
    neck = build_backbone(make_cfg("fpn_paper_128.yaml"))
    assert neck.fpn_lateral3.weight.shape == (256, 128, 1, 1)  # R-18 C3 has 128 channels
    assert neck.fpn_output3.weight.shape == (128, 256, 3, 3)
    assert {s.channels for s in neck.output_shape().values()} == {128}


def test_user_registered_neck_is_selected_by_name(make_cfg):
    @NECK_REGISTRY.register()
    class OnlyC5(PyramidNeck):
        def __init__(self, cfg, bottom_up):
            super().__init__(bottom_up, ["res5"])
            self._out_feature_strides = {"p5": 32}
            self._out_feature_channels = {"p5": 512}

        def pyramid(self, features):
            return {"p5": features["res5"]}

    try:
        neck = build_backbone(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.NECK", "OnlyC5",
                                       "MODEL.RPN.IN_FEATURES", "['p5']",
                                       "MODEL.ANCHOR_GENERATOR.SIZES", "[[32, 64, 128, 256, 512]]"))
        assert isinstance(neck, OnlyC5) and list(neck.output_shape()) == ["p5"]
    finally:
        NECK_REGISTRY._obj_map.pop("OnlyC5")


@pytest.mark.parametrize("opts, key", [
    (["MODEL.FPN_PAPER.NECK", "NoSuchNeck"], "MODEL.FPN_PAPER.NECK"),
    (["MODEL.FPN_PAPER.OUT_CHANNELS", 0], "MODEL.FPN_PAPER.OUT_CHANNELS"),
    (["MODEL.FPN_PAPER.TOP_DOWN_CHANNELS", -256], "MODEL.FPN_PAPER.TOP_DOWN_CHANNELS"),
    (["MODEL.FPN.OUT_CHANNELS", 0], "MODEL.FPN.OUT_CHANNELS"),
    (["MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res6']"], "MODEL.FPN.IN_FEATURES"),
    (["MODEL.FPN.IN_FEATURES", "['res2', 'res4']"], "MODEL.FPN.IN_FEATURES"),
])
def test_bad_neck_config_names_the_key(make_cfg, opts, key):
    with pytest.raises(ValueError) as e:
        build_backbone(make_cfg("Base-FPN-Paper.yaml", *opts))
    assert key in str(e.value)


def test_unknown_neck_lists_the_registered_ones(make_cfg):
    with pytest.raises(ValueError, match="PaperFPN"):
        build_backbone(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.NECK", "NoSuchNeck"))


def test_in_features_error_lists_what_the_bottom_up_gives(make_cfg):
    with pytest.raises(ValueError, match=r"\['res6'\] not produced.*res2 \(stride 4\), res3 \(stride 8\), res4 \(stride 16\), res5 \(stride 32\)"):
        build_backbone(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5', 'res6']"))
