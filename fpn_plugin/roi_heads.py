"""ROI heads that pool every RoI from the pyramid level Eq. 1 names, for boxes and masks alike."""
import logging
import math

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .config import check_choice
from .necks import level_of
from .poolers import LEVEL_ROUNDINGS, LevelROIPooler

__all__ = ["FPNPaperROIHeads", "POOLER_TYPES"]

logger = logging.getLogger(__name__)

#: Pooler types for MODEL.ROI_*_HEAD.POOLER_TYPE ("ROIPool" is the paper's; Sec. 4.2).
POOLER_TYPES = ("ROIPool", "ROIAlign", "ROIAlignV2")


@ROI_HEADS_REGISTRY.register()
class FPNPaperROIHeads(StandardROIHeads):
    """Detectron2's StandardROIHeads whose box, mask (and keypoint) poolers assign RoIs to the
    levels of ``MODEL.ROI_HEADS.IN_FEATURES`` (P2..P5; never P6, which is the RPN's) by Eq. 1,
    with k0 = MODEL.FPN_PAPER.CANONICAL_LEVEL, the canonical size MODEL.FPN_PAPER.CANONICAL_SIZE
    and the rounding MODEL.FPN_PAPER.LEVEL_ROUNDING: one setting drives every head.

    The paper's box head (Sec. 4.2: two hidden 1024-d fc layers, each followed by ReLU, then
    classification and box regression, shared across levels) is Detectron2's
    ``FastRCNNConvFCHead`` with NUM_CONV 0, NUM_FC 2, FC_DIM 1024, set in Base-FPN-Paper.yaml.
    """

    # Constants for TorchScript, so scripting compiles away the heads that are off.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_roi_config(cfg, input_shape)
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return _swap_pooler(super()._init_box_head(cfg, input_shape), "box_pooler", cfg, input_shape, "ROI_BOX_HEAD")

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return _swap_pooler(super()._init_mask_head(cfg, input_shape), "mask_pooler", cfg, input_shape, "ROI_MASK_HEAD")

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        return _swap_pooler(
            super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler", cfg, input_shape, "ROI_KEYPOINT_HEAD"
        )


def _swap_pooler(ret, key, cfg, input_shape, head):
    """Replace the ROIPooler Detectron2 built under ``key`` (if any) with the Eq. 1 pooler."""
    if ret.get(key) is not None:
        ret[key] = level_pooler(cfg, input_shape, head)
    return ret


def level_pooler(cfg, input_shape, head: str) -> LevelROIPooler:
    """The Eq. 1 pooler for the head whose keys are ``MODEL.<head>.POOLER_*``."""
    head_cfg = cfg.MODEL[head]
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    return LevelROIPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[f].stride for f in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        canonical_box_size=cfg.MODEL.FPN_PAPER.CANONICAL_SIZE,
        canonical_level=cfg.MODEL.FPN_PAPER.CANONICAL_LEVEL,
        level_rounding=cfg.MODEL.FPN_PAPER.LEVEL_ROUNDING,
    )


def check_roi_config(cfg, input_shape):
    """Raise ValueError naming the key for ROI-head settings that cannot work with the pyramid."""
    in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    missing = [f for f in in_features if f not in input_shape]
    if not in_features or missing:
        raise ValueError(
            f"MODEL.ROI_HEADS.IN_FEATURES={in_features}: {missing or 'empty'} not produced by "
            f"the backbone, which gives {list(input_shape)}"
        )
    if "p6" in in_features:
        raise ValueError(
            f"MODEL.ROI_HEADS.IN_FEATURES={in_features}: p6 feeds the RPN only (Sec. 4.1); "
            "the ROI heads pool p2..p5"
        )
    levels = sorted(level_of(input_shape[f].stride) for f in in_features)
    k0 = cfg.MODEL.FPN_PAPER.CANONICAL_LEVEL
    bad_k0 = isinstance(k0, bool) or not isinstance(k0, int)
    # With a single pooled level (a single-scale ablation) Eq. 1 has nothing to choose.
    if bad_k0 or (len(levels) > 1 and not levels[0] <= k0 <= levels[-1]):
        raise ValueError(
            f"MODEL.FPN_PAPER.CANONICAL_LEVEL={k0!r} must be an integer within the pooled levels "
            f"{levels[0]}..{levels[-1]} (MODEL.ROI_HEADS.IN_FEATURES={in_features})"
        )
    size = cfg.MODEL.FPN_PAPER.CANONICAL_SIZE
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not _positive_finite(size):
        raise ValueError(f"MODEL.FPN_PAPER.CANONICAL_SIZE={size!r} must be a positive number of pixels")
    check_choice(cfg.MODEL.FPN_PAPER.LEVEL_ROUNDING, LEVEL_ROUNDINGS, "MODEL.FPN_PAPER.LEVEL_ROUNDING")
    heads = ["ROI_BOX_HEAD"] + ["ROI_MASK_HEAD"] * cfg.MODEL.MASK_ON + ["ROI_KEYPOINT_HEAD"] * cfg.MODEL.KEYPOINT_ON
    for head in heads:
        pooler_type = cfg.MODEL[head].POOLER_TYPE
        if pooler_type or head == "ROI_BOX_HEAD":  # mask/keypoint heads may pool nothing ("")
            check_choice(pooler_type, POOLER_TYPES, f"MODEL.{head}.POOLER_TYPE")


def _positive_finite(x) -> bool:
    """0 < x < inf (NaN, inf and ints too large for a float are not sizes)."""
    try:
        return 0 < float(x) < math.inf
    except OverflowError:
        return False
