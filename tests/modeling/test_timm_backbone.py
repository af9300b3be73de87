"""timm bottom-ups: maps named by level from timm's own feature_info, weights from a local file,
freezing, and one clear error per bad input."""
import builtins

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

from fpn_plugin.modeling.timm_backbone import TimmBackbone, build_timm_backbone

from helpers import train_step

timm = pytest.importorskip("timm")

# Two families unlike ResNet and each other: a depthwise-separable CNN whose first map is at
# stride 2, and a ConvNeXt whose maps start at stride 4.
FAMILIES = {
    "mobilenetv3_small_050": {"res1": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32},
    "convnext_atto": {"res2": 4, "res3": 8, "res4": 16, "res5": 32},
}


def timm_cfg(make_cfg, name, *opts):
    return make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.BOTTOM_UP", "build_timm_backbone",
                    "MODEL.TIMM.NAME", name, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 32, *opts)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_maps_are_named_by_level_with_timms_channels(make_cfg, name):
    features = timm.create_model(name, features_only=True)
    by_stride = dict(zip(features.feature_info.reduction(), features.feature_info.channels()))
    backbone = build_backbone(timm_cfg(make_cfg, name))
    bottom_up = backbone.bottom_up
    assert isinstance(bottom_up, TimmBackbone)
    assert {k: v.stride for k, v in bottom_up.output_shape().items()} == FAMILIES[name]
    assert {k: v.channels for k, v in bottom_up.output_shape().items()} == {k: by_stride[s] for k, s in FAMILIES[name].items()}
    out = bottom_up(torch.randn(1, 3, 64, 96))
    for k, s in FAMILIES[name].items():
        assert out[k].shape == (1, by_stride[s], 64 // s, 96 // s), k
    pyramid = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == {
        "p2": (1, 32, 16, 24), "p3": (1, 32, 8, 12), "p4": (1, 32, 4, 6), "p5": (1, 32, 2, 3), "p6": (1, 32, 1, 2)}


class NHWCFeatures(torch.nn.Module):
    """A features model that gives channels-last maps and says so, as timm's Swin does."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.feature_info, self.output_fmt = inner, inner.feature_info, "NHWC"

    def forward(self, x):
        return [m.permute(0, 2, 3, 1) for m in self.inner(x)]


def test_channels_last_outputs_come_back_nchw():
    features = timm.create_model("convnext_atto", features_only=True)
    nchw, nhwc = TimmBackbone(features, "convnext_atto"), TimmBackbone(NHWCFeatures(features), "nhwc")
    assert not nchw.channels_last_outputs and nhwc.channels_last_outputs
    x = torch.randn(1, 3, 64, 64)
    a, b = nchw(x), nhwc(x)
    assert list(a) == list(b) == ["res2", "res3", "res4", "res5"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_training_step_on_a_timm_bottom_up(make_cfg):
    model = build_model(timm_cfg(make_cfg, "mobilenetv3_small_050"))
    train_step(model, (96, 128), (64, 96))
    assert model.backbone.bottom_up.model.conv_stem.weight.grad.abs().sum() > 0


def test_weights_from_a_local_file_are_loaded(make_cfg, tmp_path):
    """A classification checkpoint in timm's layout (with its classifier, which the bottom-up
    drops) loads into the features model: every tensor equal to the file's."""
    torch.manual_seed(1)
    source = timm.create_model("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(source.state_dict(), path)
    bottom_up = build_backbone(timm_cfg(make_cfg, "convnext_atto", "MODEL.TIMM.WEIGHTS", str(path))).bottom_up
    loaded = bottom_up.model.state_dict()
    assert torch.equal(loaded["stem_0.weight"], source.state_dict()["stem.0.weight"])
    assert torch.equal(loaded["stages_3.blocks.1.mlp.fc2.weight"], source.state_dict()["stages.3.blocks.1.mlp.fc2.weight"])


def test_freeze_at_and_frozen_bn(make_cfg):
    backbone = build_backbone(timm_cfg(make_cfg, "mobilenetv3_small_050", "MODEL.TIMM.FREEZE_AT", 2,
                                       "MODEL.TIMM.NORM", "FrozenBN")).bottom_up
    model = backbone.model
    res2_module = model.feature_info.module_name()[1]  # the stride-4 map's module: blocks.0
    assert res2_module == "blocks.0"
    assert not any(p.requires_grad for p in model.conv_stem.parameters())
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # all frozen


@pytest.mark.parametrize("opts, says", [
    (["MODEL.TIMM.NAME", "convnext_attto"], r"MODEL.TIMM.NAME='convnext_attto' is not a timm model; close matches: \['convnext_atto'"),
    (["MODEL.TIMM.NAME", ""], r"MODEL.TIMM.NAME='' is not a timm model"),
    (["MODEL.TIMM.NAME", "vit_tiny_patch16_224"], r"MODEL.TIMM.NAME='vit_tiny_patch16_224' has feature maps at strides \[16, 16, 16\]: no hierarchy"),
    (["MODEL.TIMM.NORM", "GN"], r"MODEL.TIMM.NORM='GN' is not allowed; choose one of \['', 'FrozenBN', 'SyncBN'\]"),
    (["MODEL.TIMM.FREEZE_AT", -1], r"MODEL.TIMM.FREEZE_AT=-1 must be an integer >= 0"),
    (["MODEL.TIMM.WEIGHTS", "/nonexistent/w.pth"], r"MODEL.TIMM.WEIGHTS='/nonexistent/w.pth': no such file"),
])
def test_bad_timm_values_name_the_key(make_cfg, opts, says):
    with pytest.raises(ValueError, match=says):
        build_model(timm_cfg(make_cfg, "convnext_atto", *opts))


def test_weights_that_are_unreadable_or_do_not_fit(make_cfg, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"MODEL.TIMM.WEIGHTS='.*garbage.pth' cannot be"):
        build_model(timm_cfg(make_cfg, "convnext_atto", "MODEL.TIMM.WEIGHTS", str(garbage)))
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(ValueError, match=r"MODEL.TIMM.WEIGHTS='.*resnet18.pth' cannot be loaded into timm model 'convnext_atto'"):
        build_model(timm_cfg(make_cfg, "convnext_atto", "MODEL.TIMM.WEIGHTS", str(other)))


def test_without_timm_the_error_gives_the_install_command(make_cfg, monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ImportError, match=r"needs timm, which is not installed; install it with: bash tools/setup_env.sh.*pip install 'timm==1.0.31'"):
        build_timm_backbone(timm_cfg(make_cfg, "convnext_atto"), ShapeSpec(channels=3))


def test_setup_pins_the_timm_the_code_names():
    import os
    import re

    from fpn_plugin.modeling.timm_backbone import TIMM_VERSION

    from helpers import ROOT

    with open(os.path.join(ROOT, "tools", "setup_env.sh")) as f:
        assert re.search(rf"^TIMM={re.escape(TIMM_VERSION)}$", f.read(), re.M)
