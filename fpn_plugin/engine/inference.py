"""Inference as Detectron2 runs it at test time, for the tools: a ``DefaultPredictor`` whose weights
must fit, the test loader's resize, and the pyramid level a pooler assigns to a box.

The tools go through these so that their detections are the ones COCOEvaluator scores: the same
resize (shorter side to INPUT.MIN_SIZE_TEST, longer at most INPUT.MAX_SIZE_TEST), the same input
format and the same post-processing back to the image's own pixels.
"""
from typing import List

import torch
from detectron2.data import transforms as T
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from .checked_io import load_weights_checked

__all__ = ["build_predictor", "test_time_resize", "pooler_levels"]


def test_time_resize(cfg) -> T.ResizeShortestEdge:
    """The resize of Detectron2's test loader and ``DefaultPredictor``: shorter side to
    INPUT.MIN_SIZE_TEST (0 keeps the size), longer side at most INPUT.MAX_SIZE_TEST."""
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)


def build_predictor(cfg):
    """Detectron2's ``DefaultPredictor`` for ``cfg`` (BGR images in, the test-time resize, outputs
    in the image's pixels), with MODEL.WEIGHTS loaded by the same DetectionCheckpointer but checked:
    weights that are missing, unreadable or do not fit the model are a CliError naming the file.
    The plugin's ROI heads give each detection its level (MODEL.FPN_PAPER.PRED_LEVELS on)."""
    from detectron2.engine import DefaultPredictor

    weights = cfg.MODEL.WEIGHTS
    unloaded = cfg.clone()
    unloaded.defrost()
    unloaded.MODEL.WEIGHTS = ""  # loaded below, where a misfit is an error rather than a log line
    if "FPN_PAPER" in unloaded.MODEL:
        unloaded.MODEL.FPN_PAPER.PRED_LEVELS = True  # the tools show each detection's level
    predictor = DefaultPredictor(unloaded)
    load_weights_checked(predictor.model, weights)
    predictor.cfg.MODEL.WEIGHTS = weights
    return predictor


def pooler_levels(pooler, box_lists: List[Boxes]) -> torch.Tensor:
    """(R,) int64 absolute pyramid level ``pooler`` pools each box from, by its own rule: Eq. 1
    with the plugin's settings for its LevelROIPooler, Detectron2's ``assign_boxes_to_levels``
    (the same Eq. 1, floor rounding) for Detectron2's ROIPooler."""
    if hasattr(pooler, "levels"):
        return pooler.levels(box_lists)
    return assign_boxes_to_levels(
        box_lists, pooler.min_level, pooler.max_level, pooler.canonical_box_size, pooler.canonical_level
    ) + pooler.min_level
