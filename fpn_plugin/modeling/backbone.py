"""The registered backbone: the ResNet bottom-up pathway, then a named neck."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from .bottom_up import build_bottom_up
from ..config import check_choice
from .fast_path import AUTOCAST_DTYPES, enable_fast_path
from .necks import build_neck

__all__ = ["build_resnet_fpn_paper_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_paper_backbone(cfg, input_shape: ShapeSpec):
    """ResNet C2..C5 (strides 4..32; the stem is not in the pyramid, Sec. 3; any width for R-18/34,
    see :func:`build_bottom_up`) + the neck named by MODEL.FPN_PAPER.NECK. With the paper's
    neck the outputs are p2..p6, strides 4..64.

    Also checks, before anything is trained, that the RPN's features and anchors fit the
    pyramid the neck makes (Detectron2 would otherwise fail later with a bare assertion), and
    switches on the fast path of MODEL.FPN_PAPER.FAST.
    """
    fast = cfg.MODEL.FPN_PAPER.FAST
    check_choice(fast.AUTOCAST, list(AUTOCAST_DTYPES), "MODEL.FPN_PAPER.FAST.AUTOCAST")
    check_choice(fast.CHANNELS_LAST, [False, True], "MODEL.FPN_PAPER.FAST.CHANNELS_LAST")
    neck = build_neck(cfg, build_bottom_up(cfg, input_shape))
    check_rpn_fits(cfg, list(neck.output_shape()))
    return enable_fast_path(neck, channels_last=fast.CHANNELS_LAST, autocast=fast.AUTOCAST)


def check_rpn_fits(cfg, levels):
    """Raise ValueError naming the key when MODEL.RPN.IN_FEATURES or the anchor generator's
    SIZES / ASPECT_RATIOS do not match the pyramid levels ``levels`` (e.g. ["p2", ..., "p6"])."""
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "RPN":
        return
    rpn_in = list(cfg.MODEL.RPN.IN_FEATURES)
    missing = [f for f in rpn_in if f not in levels]
    if missing:
        raise ValueError(
            f"MODEL.RPN.IN_FEATURES={rpn_in}: {missing} not produced by the backbone, "
            f"which gives {levels}"
        )
    for key in ("SIZES", "ASPECT_RATIOS"):
        value = cfg.MODEL.ANCHOR_GENERATOR[key]
        # One list per level, or a single list that Detectron2 repeats on every level.
        if len(value) not in (1, len(rpn_in)):
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR.{key} has {len(value)} lists {list(value)} but "
                f"MODEL.RPN.IN_FEATURES has {len(rpn_in)} levels {rpn_in}: give one list per "
                "level (the paper: [[32], [64], [128], [256], [512]] on p2..p6) or a single list"
            )
