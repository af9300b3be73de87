"""The bottom-up pathway: Detectron2's ResNet, and R-18/34 at widths Detectron2 does not build."""
import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from fpn_plugin.modeling.bottom_up import build_resnet_bottom_up as build_bottom_up

from helpers import CONFIGS

FULL_WIDTH = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


def test_width_64_is_the_standard_resnet18():
    """At width 64 the bottom-up is He et al.'s ResNet-18: the same parameter tensors as
    torchvision's resnet18 without its classifier (11,176,512 parameters), an independent build."""
    import torchvision

    from fpn_plugin.config import load_config

    cfg = load_config(os.path.join(CONFIGS, "fpn_paper.yaml"), FULL_WIDTH)
    ours = build_bottom_up(cfg, ShapeSpec(channels=3))
    reference = [p for n, p in torchvision.models.resnet18().named_parameters() if not n.startswith("fc.")]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference) == 11_176_512
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in reference)


@pytest.mark.parametrize("depth", [18, 34])
def test_half_width_halves_every_channel_and_keeps_names(make_cfg, depth):
    """Width 32 is the width-64 network with every conv's in and out channels halved (the
    image's 3 input channels excepted), under the same parameter names."""
    common = ["MODEL.RESNETS.DEPTH", depth]
    full = build_bottom_up(make_cfg("fpn_paper.yaml", *common, *FULL_WIDTH, small=False), ShapeSpec(channels=3))
    half = build_bottom_up(make_cfg("fpn_paper.yaml", *common, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
                                    "MODEL.RESNETS.STEM_OUT_CHANNELS", 32, small=False), ShapeSpec(channels=3))
    full_sd, half_sd = full.state_dict(), half.state_dict()
    assert list(full_sd) == list(half_sd)
    for name, w in full_sd.items():
        if w.dim() == 0:  # BN's num_batches_tracked
            continue
        expected = [s // 2 for s in w.shape]
        if w.dim() == 4:  # conv weight (out, in, kh, kw): the kernel keeps its size, the image its 3 channels
            expected[2:] = w.shape[2:]
            if w.shape[1] == 3:
                expected[1] = 3
        assert list(half_sd[name].shape) == expected, name
    assert {k: (s.channels, s.stride) for k, s in half.output_shape().items()} == {
        "res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)}
    torch.manual_seed(0)
    out = half.eval()(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 16, 24), "res3": (1, 64, 8, 12), "res4": (1, 128, 4, 6), "res5": (1, 256, 2, 3)}


def test_narrow_pyramid_and_single_map_backbones_build(make_cfg):
    narrow = ["MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.STEM_OUT_CHANNELS", 32]
    fpn = build_backbone(make_cfg("fpn_paper.yaml", *narrow, small=False))
    assert fpn.bottom_up.output_shape()["res5"].channels == 256
    assert fpn.output_shape()["p2"].channels == 128  # the neck's width is its own
    c5 = build_backbone(make_cfg("fpn_paper.yaml", *narrow, "MODEL.BACKBONE.NAME", "build_resnet_any_width_backbone",
                                 "MODEL.RESNETS.OUT_FEATURES", ["res5"], small=False))
    assert {k: (s.channels, s.stride) for k, s in c5.output_shape().items()} == {"res5": (256, 32)}


@pytest.mark.parametrize("opts, key", [
    (["MODEL.RESNETS.RES2_OUT_CHANNELS", 0], "MODEL.RESNETS.RES2_OUT_CHANNELS"),
    (["MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.STEM_OUT_CHANNELS", -8], "MODEL.RESNETS.STEM_OUT_CHANNELS"),
    (["MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.NUM_GROUPS", 2], "MODEL.RESNETS.NUM_GROUPS"),
    (["MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.RES5_DILATION", 2], "MODEL.RESNETS.RES5_DILATION"),
    (["MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, True, False]],
     "MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
])
def test_bad_width_options_name_the_key(make_cfg, opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_bottom_up(make_cfg("fpn_paper.yaml", *opts, small=False), ShapeSpec(channels=3))
