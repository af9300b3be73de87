"""Inference as Detectron2 runs it at test time, for the tools: a ``DefaultPredictor`` whose weights
must fit, the test loader's resize, and the pyramid level each detection's RoI was pooled from.

The tools go through these so that their detections are the ones COCOEvaluator scores: the same
resize (shorter side to INPUT.MIN_SIZE_TEST, longer at most INPUT.MAX_SIZE_TEST), the same input
format and the same post-processing back to the image's own pixels.
"""
import contextlib
from typing import List

import torch
from detectron2.data import transforms as T
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from .checked_io import load_weights_checked

__all__ = ["build_predictor", "test_time_resize", "record_levels", "pooler_levels"]


def test_time_resize(cfg) -> T.ResizeShortestEdge:
    """The resize of Detectron2's test loader and ``DefaultPredictor``: shorter side to
    INPUT.MIN_SIZE_TEST (0 keeps the size), longer side at most INPUT.MAX_SIZE_TEST."""
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)


def build_predictor(cfg):
    """Detectron2's ``DefaultPredictor`` for ``cfg`` (BGR images in, the test-time resize, outputs
    in the image's pixels), with MODEL.WEIGHTS loaded by the same DetectionCheckpointer but checked:
    weights that are missing, unreadable or do not fit the model are a CliError naming the file."""
    from detectron2.engine import DefaultPredictor

    weights = cfg.MODEL.WEIGHTS
    unloaded = cfg.clone()
    unloaded.defrost()
    unloaded.MODEL.WEIGHTS = ""  # loaded below, where a misfit is an error rather than a log line
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


@contextlib.contextmanager
def record_levels(model):
    """While active, every ``Instances`` that ``model``'s box head outputs at inference carries
    ``pred_levels``: (R,) int64, the pyramid level (2..5 for P2..P5) the proposal its box was
    regressed from was pooled from, by :func:`pooler_levels`. The field is set where the box
    predictor picks its detections, so it follows them through batching, empty images and
    Detectron2's post-processing. ROI heads that already set ``pred_levels`` are left alone.

    Yields whether the model's ROI heads have what this needs (a ``box_pooler`` and a
    ``box_predictor`` with ``inference``, as StandardROIHeads and the plugin's heads have).
    """
    heads = getattr(model, "roi_heads", None)
    predictor = getattr(heads, "box_predictor", None)
    pooler = getattr(heads, "box_pooler", None)
    if pooler is None or not isinstance(predictor, torch.nn.Module) or not hasattr(predictor, "inference"):
        yield False
        return
    before = predictor.__dict__.get("inference")  # set by an enclosing record_levels, if any
    original = predictor.inference

    def inference(predictions, proposals):
        results, kept = original(predictions, proposals)
        for result, proposal, keep in zip(results, proposals, kept):
            if not result.has("pred_levels"):
                result.pred_levels = pooler_levels(pooler, [proposal.proposal_boxes])[keep]
        return results, kept

    predictor.inference = inference
    try:
        yield True
    finally:
        if before is None:
            del predictor.inference
        else:
            predictor.inference = before
