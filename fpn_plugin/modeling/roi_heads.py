"""ROI heads that pool every RoI from the pyramid level Eq. 1 names, for boxes and masks alike."""
import logging
import math
from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, build_box_head, build_keypoint_head, build_mask_head
from detectron2.structures import Instances

from ..config import check_choice
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

    At inference every output Instances also has ``pred_levels``, (R,) int64: the absolute
    pyramid level (2 for P2, ...) the detection's RoI (the proposal its box was regressed
    from) was pooled from.
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
        in_features, pooler, shape = level_pooler(cfg, input_shape, "ROI_BOX_HEAD")
        box_head = build_box_head(cfg, shape)
        return {
            "box_in_features": in_features,
            "box_pooler": pooler,
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features, pooler, shape = level_pooler(cfg, input_shape, "ROI_MASK_HEAD")
        return {"mask_in_features": in_features, "mask_pooler": pooler, "mask_head": build_mask_head(cfg, shape)}

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        in_features, pooler, shape = level_pooler(cfg, input_shape, "ROI_KEYPOINT_HEAD")
        return {
            "keypoint_in_features": in_features,
            "keypoint_pooler": pooler,
            "keypoint_head": build_keypoint_head(cfg, shape),
        }

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Training: Detectron2's box branch (losses). Inference: the same computation, and each
        detection's ``pred_levels`` taken from the proposal it was regressed from."""
        if self.training:
            return super()._forward_box(features, proposals)
        boxes = [p.proposal_boxes for p in proposals]
        box_features = self.box_head(self.box_pooler([features[f] for f in self.box_in_features], boxes))
        predictions = self.box_predictor(box_features)
        # As in Detectron2's _forward_box, nothing keeps the pooled RoIs (at batch 8, 8000 x 256 x
        # 7 x 7 floats: 400 MB) past the box head, nor the head's features past the predictor.
        del box_features
        instances, kept = self.box_predictor.inference(predictions, proposals)
        for inst, proposal_boxes, keep in zip(instances, boxes, kept):
            inst.pred_levels = self.box_pooler.levels([proposal_boxes])[keep]
        return instances


def level_pooler(cfg, input_shape, head: str):
    """(in_features, the Eq. 1 pooler or None, the head's input shape) for the head whose keys
    are ``MODEL.<head>.POOLER_*``. A mask or keypoint head with POOLER_TYPE "" pools nothing
    and gets the feature shapes by name, as in Detectron2."""
    head_cfg = cfg.MODEL[head]
    in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    if not head_cfg.POOLER_TYPE:
        return in_features, None, {f: input_shape[f] for f in in_features}
    size = head_cfg.POOLER_RESOLUTION
    pooler = LevelROIPooler(
        output_size=size,
        scales=tuple(1.0 / input_shape[f].stride for f in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        canonical_box_size=cfg.MODEL.FPN_PAPER.CANONICAL_SIZE,
        canonical_level=cfg.MODEL.FPN_PAPER.CANONICAL_LEVEL,
        level_rounding=cfg.MODEL.FPN_PAPER.LEVEL_ROUNDING,
    )
    return in_features, pooler, ShapeSpec(channels=input_shape[in_features[0]].channels, height=size, width=size)


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
    channels = sorted({input_shape[f].channels for f in in_features})
    if len(channels) > 1:
        raise ValueError(
            f"MODEL.ROI_HEADS.IN_FEATURES={in_features} have different widths {channels}; "
            "the heads are shared across levels and need one width"
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
