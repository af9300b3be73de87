"""ROI heads that pool every RoI from the pyramid level Eq. 1 names, for boxes and masks alike."""
import logging
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from ..config import check_choice
from .poolers import LevelROIPooler

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

    With ``pred_levels`` (MODEL.FPN_PAPER.PRED_LEVELS; the tools switch it on), every output
    Instances at inference also has ``pred_levels``, (R,) int64: the absolute pyramid level (2
    for P2, ...) the detection's RoI (the proposal its box was regressed from) was pooled from.
    Off, the outputs have exactly Detectron2's fields, as code comparing them expects.
    """

    # Constants for TorchScript, so scripting compiles away the branches that are off.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]
    pred_levels: torch.jit.Final[bool]

    def __init_subclass__(cls, **kwargs):
        # TorchScript reads constants from a class's own annotations, which a subclass does not
        # inherit: without this a user's subclass would not script.
        super().__init_subclass__(**kwargs)
        cls.__annotations__ = {**FPNPaperROIHeads.__annotations__, **cls.__dict__.get("__annotations__", {})}

    @configurable
    def __init__(self, *, pred_levels: bool = False, **kwargs):
        """
        Args:
            pred_levels: give each detection its RoI's level as the field ``pred_levels``.
            kwargs: the arguments of Detectron2's StandardROIHeads.
        """
        super().__init__(**kwargs)
        check_choice(pred_levels, [False, True], "MODEL.FPN_PAPER.PRED_LEVELS", "pred_levels")
        self.pred_levels = pred_levels

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_roi_config(cfg, input_shape)
        return {**super().from_config(cfg, input_shape), "pred_levels": cfg.MODEL.FPN_PAPER.PRED_LEVELS}

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return _with_eq1_pooler(super()._init_box_head(cfg, input_shape), "box_pooler", cfg, input_shape, "ROI_BOX_HEAD")

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return _with_eq1_pooler(super()._init_mask_head(cfg, input_shape), "mask_pooler", cfg, input_shape, "ROI_MASK_HEAD")

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        return _with_eq1_pooler(
            super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler", cfg, input_shape, "ROI_KEYPOINT_HEAD"
        )

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Detectron2's box branch. Its inference half is written out here because Detectron2's
        drops the indices of the kept proposals, which ``pred_levels`` reads; the computation
        is the same."""
        if self.training:
            return super()._forward_box(features, proposals)
        boxes = [p.proposal_boxes for p in proposals]
        box_features = self.box_head(self.box_pooler([features[f] for f in self.box_in_features], boxes))
        predictions = self.box_predictor(box_features)
        # As in Detectron2's _forward_box, nothing keeps the pooled RoIs (at batch 8, 8000 x 256 x
        # 7 x 7 floats: 400 MB) past the box head, nor the head's features past the predictor.
        del box_features
        instances, kept = self.box_predictor.inference(predictions, proposals)
        if self.pred_levels:
            for inst, proposal_boxes, keep in zip(instances, boxes, kept):
                levels = self.box_pooler.levels([proposal_boxes])[keep]
                if torch.jit.is_scripting():
                    # A scripted Instances has only the fields given to scripting_with_instances
                    # (field f held as attribute _f; TorchScript decides hasattr when compiling):
                    # without pred_levels among them, this compiles away.
                    if hasattr(inst, "_pred_levels"):
                        inst.pred_levels = levels
                else:
                    inst.pred_levels = levels
        return instances


def _with_eq1_pooler(head: dict, key: str, cfg, input_shape, head_name: str) -> dict:
    """Detectron2's head arguments ``head`` with its ROIPooler ``head[key]`` (absent or None when
    the head is off or pools nothing) replaced by the Eq. 1 pooler of the same MODEL.<head_name>
    keys, on the same levels."""
    if head.get(key) is None:
        return head
    head_cfg = cfg.MODEL[head_name]
    return {**head, key: LevelROIPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[f].stride for f in cfg.MODEL.ROI_HEADS.IN_FEATURES),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        canonical_box_size=cfg.MODEL.FPN_PAPER.CANONICAL_SIZE,
        canonical_level=cfg.MODEL.FPN_PAPER.CANONICAL_LEVEL,
        level_rounding=cfg.MODEL.FPN_PAPER.LEVEL_ROUNDING,
    )}


def check_roi_config(cfg, input_shape):
    """Raise ValueError naming the key for ROI-head settings that cannot work with the pyramid:
    the features and pooler types, which only the config path sees together with the pyramid's
    shapes. Eq. 1's own settings are checked by :class:`LevelROIPooler`, on every path."""
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
    heads = ["ROI_BOX_HEAD"] + ["ROI_MASK_HEAD"] * cfg.MODEL.MASK_ON + ["ROI_KEYPOINT_HEAD"] * cfg.MODEL.KEYPOINT_ON
    for head in heads:
        pooler_type = cfg.MODEL[head].POOLER_TYPE
        if pooler_type or head == "ROI_BOX_HEAD":  # mask/keypoint heads may pool nothing ("")
            check_choice(pooler_type, POOLER_TYPES, f"MODEL.{head}.POOLER_TYPE")

