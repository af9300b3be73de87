"""The pyramid on any registered bottom-up, its levels above C5 as a key, and only the detector's
own keys checked."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone, build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

from fpn_plugin import PaperFPN

from helpers import inputs, train_step


class ToyBottomUp(Backbone):
    """Four plain conv stages: c2..c5 at strides 4..32 with 8, 12, 16, 20 channels (names and
    widths unlike ResNet's, so nothing can be assumed), or any ``strides`` asked for."""

    def __init__(self, strides=(4, 8, 16, 32), channels=(8, 12, 16, 20)):
        super().__init__()
        self.strides, self.channels = strides, channels
        layers, c_in, s_in = [], 3, 1
        for s, c in zip(strides, channels):
            layers.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=s // s_in, padding=1), nn.ReLU()))
            c_in, s_in = c, s
        self.stages = nn.ModuleList(layers)

    def forward(self, x):
        out = {}
        for k, stage in enumerate(self.stages):
            x = stage(x)
            out[f"c{k + 2}"] = x
        return out

    def output_shape(self):
        return {f"c{k + 2}": ShapeSpec(channels=c, stride=s) for k, (s, c) in enumerate(zip(self.strides, self.channels))}


# A user's own Backbone, registered in three lines.
@BACKBONE_REGISTRY.register()
def build_toy_bottom_up(cfg, input_shape):
    return ToyBottomUp()


@BACKBONE_REGISTRY.register()
def build_toy_gappy_bottom_up(cfg, input_shape):
    return ToyBottomUp(strides=(4, 8, 32, 64))


TOY = ["MODEL.FPN_PAPER.BOTTOM_UP", "build_toy_bottom_up", "MODEL.FPN.IN_FEATURES", "['c2', 'c3', 'c4', 'c5']"]


def shapes(backbone):
    return {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}


def test_user_bottom_up_gives_the_papers_pyramid(make_cfg):
    backbone = build_backbone(make_cfg("Base-FPN-Paper.yaml", *TOY))
    assert isinstance(backbone.bottom_up, ToyBottomUp)
    assert shapes(backbone) == {f"p{k}": (256, 2 ** k) for k in range(2, 7)}
    # the laterals read the toy's own widths
    assert [backbone.get_submodule(f"fpn_lateral{k}").in_channels for k in range(2, 6)] == [8, 12, 16, 20]
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 256, 16, 24), "p3": (1, 256, 8, 12), "p4": (1, 256, 4, 6), "p5": (1, 256, 2, 3), "p6": (1, 256, 1, 2)}


@pytest.mark.parametrize("top_block, extra", [
    ("maxpool", {"p6": 64}), ("p6p7_c5", {"p6": 64, "p7": 128}), ("p6p7_p5", {"p6": 64, "p7": 128}), ("", {}),
])
def test_each_top_block_adds_its_levels(make_cfg, top_block, extra):
    backbone = build_backbone(make_cfg("Base-FPN-Paper.yaml", *TOY, "MODEL.FPN_PAPER.TOP_BLOCK", top_block,
                                       "MODEL.RPN.IN_FEATURES", "['p2']", "MODEL.ANCHOR_GENERATOR.SIZES", "[[32]]"))
    assert shapes(backbone) == {**{f"p{k}": (256, 2 ** k) for k in range(2, 6)}, **{k: (256, s) for k, s in extra.items()}}
    out = backbone(torch.randn(2, 3, 128, 256))
    for name, stride in backbone._out_feature_strides.items():
        assert out[name].shape == (2, 256, 128 // stride, 256 // stride), name
    if top_block == "maxpool":  # Detectron2's module: P6 is every other cell of P5
        assert isinstance(backbone.top_block, LastLevelMaxPool)
        assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])
    if top_block.startswith("p6p7"):
        assert isinstance(backbone.top_block, LastLevelP6P7)
        # Detectron2's parameter names, so RetinaNet checkpoints carry over; in: C5 (20) or P5 (256)
        assert backbone.top_block.p6.in_channels == (20 if top_block == "p6p7_c5" else 256)
        assert {k for k in backbone.state_dict() if k.startswith("top_block")} == {
            "top_block.p6.weight", "top_block.p6.bias", "top_block.p7.weight", "top_block.p7.bias"}
        p5_or_c5 = backbone.bottom_up(torch.randn(1, 3, 64, 64))["c5"] if top_block == "p6p7_c5" else None
        if p5_or_c5 is not None:  # P7 = conv(ReLU(P6)), P6 = conv(C5): the block's own arithmetic
            p6 = backbone.top_block.p6(p5_or_c5)
            assert torch.allclose(backbone.top_block.p7(torch.relu(p6)), backbone.top_block(p5_or_c5)[1])


def test_inputs_from_c3_give_p3_to_p7(make_cfg):
    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']",
                   "MODEL.FPN_PAPER.TOP_BLOCK", "p6p7_c5", "MODEL.RPN.IN_FEATURES", "['p3', 'p4', 'p5', 'p6', 'p7']",
                   "MODEL.ROI_HEADS.IN_FEATURES", "['p3', 'p4', 'p5']")
    backbone = build_backbone(cfg)
    assert shapes(backbone) == {f"p{k}": (256, 2 ** k) for k in range(3, 8)}
    assert backbone.top_block.p6.in_channels == 512  # R-18's C5


def test_faster_rcnn_trains_on_a_non_resnet_bottom_up_with_eq1_on_p2_to_p5(make_cfg):
    model = build_model(make_cfg("Base-FPN-Paper.yaml", *TOY, "MODEL.FPN_PAPER.PRED_LEVELS", True))
    assert (model.roi_heads.box_pooler.min_level, model.roi_heads.box_pooler.max_level) == (2, 5)
    assert model.roi_heads.box_pooler.canonical_level == 4 and model.roi_heads.box_pooler.canonical_box_size == 224
    train_step(model, (96, 128), (70, 101))
    assert model.backbone.bottom_up.stages[0][0].weight.grad.abs().sum() > 0  # the toy itself learns
    model.eval()
    with torch.no_grad():
        inst = model(inputs((96, 128), boxes=False))[0]["instances"]
    assert ((inst.pred_levels >= 2) & (inst.pred_levels <= 5)).all()


def test_lazy_neck_takes_a_backbone_object():
    """The neck as LazyConfig builds it: any Backbone object, here Detectron2's RegNet, which has
    no yacs builder (configs/fpn_paper_regnet.py)."""
    import os

    from detectron2.config import LazyConfig, instantiate

    from helpers import CONFIGS

    lazy = LazyConfig.load(os.path.join(CONFIGS, "fpn_paper_regnet.py"))
    model = instantiate(lazy.model)
    from detectron2.modeling.backbone.regnet import RegNet

    assert isinstance(model.backbone, PaperFPN) and isinstance(model.backbone.bottom_up, RegNet)
    assert shapes(model.backbone) == {f"p{k}": (128, 2 ** k) for k in range(2, 7)}
    train_step(model, (96, 128))


@pytest.mark.parametrize("opts, says", [
    (["MODEL.FPN_PAPER.BOTTOM_UP", "build_no_such_thing"],
     r"MODEL.FPN_PAPER.BOTTOM_UP='build_no_such_thing' is not registered.*build_resnet_any_width_backbone.*build_timm_backbone"),
    (["MODEL.FPN_PAPER.BOTTOM_UP", "build_resnet_fpn_paper_backbone"], r"BOTTOM_UP='build_resnet_fpn_paper_backbone' builds a pyramid"),
    (["MODEL.FPN_PAPER.BOTTOM_UP", "build_toy_gappy_bottom_up", "MODEL.FPN.IN_FEATURES", "['c2', 'c3', 'c4', 'c5']"],
     r"MODEL.FPN.IN_FEATURES \(in_features\)=\['c2', 'c3', 'c4', 'c5'\] have strides \[4, 8, 32, 64\]"),
    (TOY + ["MODEL.FPN.IN_FEATURES", "['c4', 'c5', 'c6']"], r"\['c6'\] not produced by the bottom-up network ToyBottomUp.*c5 \(stride 32\)"),
    # too few levels for the pyramid asked of it: the RPN wants p2..p6, C4..C5 give p4..p6
    (TOY + ["MODEL.FPN.IN_FEATURES", "['c4', 'c5']"], r"MODEL.RPN.IN_FEATURES=.*\['p2', 'p3'\] not produced"),
    (["MODEL.FPN_PAPER.TOP_BLOCK", "p6p7"], r"MODEL.FPN_PAPER.TOP_BLOCK \(top_block\)='p6p7' is not allowed.*'maxpool', 'p6p7_c5', 'p6p7_p5', ''"),
    (["MODEL.FPN_PAPER.TOP_BLOCK", "p6p7_c5", "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4']"],
     r"TOP_BLOCK \(top_block\)='p6p7_c5' builds P6/P7 from C5.*res4 at stride 16"),
])
def test_bad_bottom_up_and_top_block_name_the_key(make_cfg, opts, says):
    with pytest.raises(ValueError, match=says):
        build_model(make_cfg("Base-FPN-Paper.yaml", *opts))


def test_direct_construction_gets_the_same_errors():
    kwargs = dict(bottom_up=ToyBottomUp(), in_features=["c2", "c3", "c4", "c5"], top_down_channels=8, out_channels=8)
    with pytest.raises(ValueError, match=r"MODEL.FPN.FUSE_TYPE \(fuse_type\)='max' is not allowed"):
        PaperFPN(**kwargs, fuse_type="max")
    with pytest.raises(ValueError, match=r"MODEL.FPN.NORM \(norm\)='LN' is not allowed"):
        PaperFPN(**kwargs, norm="LN")
    with pytest.raises(ValueError, match=r"MODEL.FPN_PAPER.TOP_BLOCK \(top_block\)='p8'"):
        PaperFPN(**kwargs, top_block="p8")
    with pytest.raises(ValueError, match=r"MODEL.FPN_PAPER.OUT_CHANNELS \(out_channels\)=0"):
        PaperFPN(**{**kwargs, "out_channels": 0})


def test_retinanet_reads_its_own_keys_not_the_rpns(make_cfg):
    """Detectron2's RetinaNet config with the plugin's backbone: MODEL.RPN.IN_FEATURES (res4 in
    Detectron2's defaults) is not read by a RetinaNet and not checked; its own keys are."""
    cfg = make_cfg("fpn_paper_retinanet.yaml", "MODEL.RPN.IN_FEATURES", "['res4']")
    model = build_model(cfg)
    assert list(model.backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    bad = make_cfg("fpn_paper_retinanet.yaml", "MODEL.RETINANET.IN_FEATURES", "['p2', 'p3']")
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES=\['p2', 'p3'\]: \['p2'\] not produced"):
        build_model(bad)
