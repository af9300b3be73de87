"""The bottom-up pathway (Sec. 3): any Backbone registered in Detectron2's ``BACKBONE_REGISTRY``,
named by ``MODEL.FPN_PAPER.BOTTOM_UP`` (:func:`build_bottom_up`); by default Detectron2's ResNet,
C2..C5 at strides 4, 8, 16, 32, built here at any width (:func:`build_resnet_bottom_up`).

Detectron2 builds ResNet-18/34 at one width only (``MODEL.RESNETS.RES2_OUT_CHANNELS`` must be 64).
The paper fixes the pathway's stages and strides, not its width, and a network trained from scratch
on a CPU buys more iterations with fewer channels. Here the basic-block depths take any positive
``RES2_OUT_CHANNELS`` (the width of C2, doubled at each later stage, as in Detectron2) and
``STEM_OUT_CHANNELS``. At width 64, and for every bottleneck depth, the pathway is the one
Detectron2's ``build_resnet_backbone`` builds, by that function, so checkpoints keep their names.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from ..config import check_width

__all__ = ["basic_block_stages", "build_bottom_up", "build_resnet_bottom_up", "build_resnet_any_width_backbone",
           "PYRAMID_BUILDERS"]

#: Registered builders that make a pyramid themselves, so cannot be the bottom-up of one.
PYRAMID_BUILDERS = ("build_resnet_fpn_paper_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")

# Blocks per stage res2..res5 of the basic-block ResNets (He et al., Table 1).
BASIC_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def basic_block_stages(depth: int, stem_channels: int, res2_channels: int, norm: str = "BN"):
    """Stages res2..res5 of a basic-block ResNet (depth 18 or 34) behind a stem of
    ``stem_channels``: widths w, 2w, 4w, 8w for ``res2_channels`` w, strides 4, 8, 16, 32 (res2
    keeps the stem's stride, each later stage halves). The argument of Detectron2's ``ResNet`` (as
    ``ResNet.make_default_stages`` is, at width 64 only); LazyConfigs call it directly."""
    stages, in_channels = [], stem_channels
    for i, blocks in enumerate(BASIC_BLOCKS[depth]):
        out_channels = res2_channels * 2**i
        stages.append(ResNet.make_stage(block_class=BasicBlock, num_blocks=blocks,
                                        stride_per_block=[1 if i == 0 else 2] + [1] * (blocks - 1),
                                        in_channels=in_channels, out_channels=out_channels, norm=norm))
        in_channels = out_channels
    return stages


def build_bottom_up(cfg, input_shape: ShapeSpec) -> Backbone:
    """The bottom-up network MODEL.FPN_PAPER.BOTTOM_UP names: a builder in Detectron2's
    ``BACKBONE_REGISTRY``, called as ``builder(cfg, input_shape)`` (default
    ``build_resnet_any_width_backbone``, the ResNet of MODEL.RESNETS). The neck reads the
    channels and strides of whatever its ``output_shape()`` gives.

    Raises ValueError naming the key and listing the registered builders for an unknown name or
    one that builds a pyramid itself, and TypeError when the builder returns no Backbone.
    """
    name = cfg.MODEL.FPN_PAPER.BOTTOM_UP
    registered = sorted(n for n, _ in BACKBONE_REGISTRY if n not in PYRAMID_BUILDERS)
    if name in PYRAMID_BUILDERS or name not in BACKBONE_REGISTRY:
        why = "builds a pyramid itself" if name in PYRAMID_BUILDERS else "is not registered in BACKBONE_REGISTRY"
        raise ValueError(f"MODEL.FPN_PAPER.BOTTOM_UP={name!r} {why}; registered bottom-ups: {registered}")
    bottom_up = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(bottom_up, Backbone):
        raise TypeError(f"MODEL.FPN_PAPER.BOTTOM_UP={name!r} returned a {type(bottom_up).__name__}, not a detectron2 Backbone")
    return bottom_up


def build_resnet_bottom_up(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet of MODEL.RESNETS on an input of ``input_shape`` (channels, e.g. 3).

    Returns a Detectron2 ``ResNet`` whose ``forward`` maps (N, C, H, W) images to the features of
    MODEL.RESNETS.OUT_FEATURES, e.g. res2..res5 at strides 4..32 with widths w, 2w, 4w, 8w for a
    basic-block ResNet of RES2_OUT_CHANNELS w. Raises ValueError naming the key for a width that
    is not a positive int, and for the options basic blocks do not have.
    """
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in BASIC_BLOCKS or r.RES2_OUT_CHANNELS == 64:
        return build_resnet_backbone(cfg, input_shape)
    check_width(r.RES2_OUT_CHANNELS, "MODEL.RESNETS.RES2_OUT_CHANNELS")
    check_width(r.STEM_OUT_CHANNELS, "MODEL.RESNETS.STEM_OUT_CHANNELS")
    unsupported = {"NUM_GROUPS": r.NUM_GROUPS != 1, "RES5_DILATION": r.RES5_DILATION != 1,
                   "DEFORM_ON_PER_STAGE": any(r.DEFORM_ON_PER_STAGE)}
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"MODEL.RESNETS.{key}={r[key]!r} is not available for ResNet-{r.DEPTH}, "
                             "whose basic blocks have no groups, dilation or deformable convs")
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages = basic_block_stages(r.DEPTH, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.NORM)
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_resnet_any_width_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """:func:`build_resnet_bottom_up` as a registered backbone: the default bottom-up of the
    pyramid, and on its own the single-map models (the C4 and C5 rows of the paper's ablations)
    at the width of the pyramid they are compared with."""
    return build_resnet_bottom_up(cfg, input_shape)
