"""The registered backbone: a bottom-up network (ResNet by default, any registered one by name),
then a named neck, checked against what the chosen detector reads from it."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ..config import check_choice
from .bottom_up import build_bottom_up
from .fast_path import AUTOCAST_DTYPES, enable_fast_path
from .necks import build_neck

__all__ = ["build_resnet_fpn_paper_backbone", "check_detector_fits"]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_paper_backbone(cfg, input_shape: ShapeSpec):
    """The bottom-up of MODEL.FPN_PAPER.BOTTOM_UP (default: ResNet C2..C5, strides 4..32, at any
    width; the stem is not in the pyramid, Sec. 3) + the neck named by MODEL.FPN_PAPER.NECK and
    the levels of MODEL.FPN_PAPER.TOP_BLOCK. With the paper's neck and the default inputs the
    outputs are p2..p6, strides 4..64 (p3..p7 for RetinaNet's inputs res3..res5 and "p6p7_c5").

    Also checks, before anything is trained, that the features and anchors the detector reads
    fit the pyramid the neck makes (Detectron2 would otherwise fail later with a bare assertion),
    and switches on the fast path of MODEL.FPN_PAPER.FAST.
    """
    fast = cfg.MODEL.FPN_PAPER.FAST
    check_choice(fast.AUTOCAST, list(AUTOCAST_DTYPES), "MODEL.FPN_PAPER.FAST.AUTOCAST")
    check_choice(fast.CHANNELS_LAST, [False, True], "MODEL.FPN_PAPER.FAST.CHANNELS_LAST")
    neck = build_neck(cfg, build_bottom_up(cfg, input_shape))
    check_detector_fits(cfg, list(neck.output_shape()))
    return enable_fast_path(neck, channels_last=fast.CHANNELS_LAST, autocast=fast.AUTOCAST)


def _dense_head_keys(cfg):
    """(config node of the features a detector's dense head reads, its name) for the
    meta-architecture of ``cfg``, or None where it reads none the plugin knows: only those keys
    are checked. The R-CNNs read the RPN's (if it is their proposal generator), RetinaNet its own."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "RetinaNet":
        return cfg.MODEL.RETINANET, "MODEL.RETINANET"
    if arch in ("GeneralizedRCNN", "ProposalNetwork") and cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN":
        return cfg.MODEL.RPN, "MODEL.RPN"
    return None


def check_detector_fits(cfg, levels):
    """Raise ValueError naming the key when the IN_FEATURES of the detector's dense head
    (MODEL.RPN for the R-CNNs, MODEL.RETINANET for RetinaNet) or the anchor generator's SIZES /
    ASPECT_RATIOS do not match the pyramid levels ``levels`` (e.g. ["p2", ..., "p6"]). Keys the
    chosen meta-architecture does not read are not checked."""
    found = _dense_head_keys(cfg)
    if found is None:
        return
    node, key = found
    head_in = list(node.IN_FEATURES)
    missing = [f for f in head_in if f not in levels]
    if missing or not head_in:
        hint = ""
        if "p7" in missing and cfg.MODEL.FPN_PAPER.TOP_BLOCK not in ("p6p7_c5", "p6p7_p5"):
            hint = " (MODEL.FPN_PAPER.TOP_BLOCK 'p6p7_c5' adds RetinaNet's P6 and P7)"
        raise ValueError(
            f"{key}.IN_FEATURES={head_in}: {missing or 'empty'} not produced by the backbone, "
            f"which gives {levels}{hint}"
        )
    for name in ("SIZES", "ASPECT_RATIOS"):
        value = cfg.MODEL.ANCHOR_GENERATOR[name]
        # One list per level, or a single list that Detectron2 repeats on every level.
        if len(value) not in (1, len(head_in)):
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR.{name} has {len(value)} lists {list(value)} but "
                f"{key}.IN_FEATURES has {len(head_in)} levels {head_in}: give one list per "
                "level (the paper: [[32], [64], [128], [256], [512]] on p2..p6) or a single list"
            )
