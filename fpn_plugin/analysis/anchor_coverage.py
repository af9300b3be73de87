"""How well the RPN's anchors cover a dataset's ground-truth boxes, before training.

The boxes are measured in the pixels the model sees (each image resized as at test time and padded
as the model pads it); for each box this gives its best IoU with the anchors Detectron2's anchor
generator places on the image's grid, the level of that anchor, and how many anchors the RPN's
matcher labels positive for it, with per COCO size class summaries. Every size here is in input
pixels (after the test-time resize), the unit anchors are in. :mod:`fpn_plugin.analysis.pyramid_fit` builds
the level report on these.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, BoxMode, pairwise_iou

__all__ = ["SIZE_CLASSES", "RATIO_BANDS", "GtBoxes", "gt_boxes", "feature_levels", "build_anchors", "Coverage", "build_matcher",
           "anchor_coverage", "nearest_anchor_iou", "coverage_table", "positives_table"]

logger = logging.getLogger(__name__)

#: COCO's size classes, by box area w*h in the original image: [low, high) in px^2.
SIZE_CLASSES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
THRESHOLDS = (0.5, 0.7)
#: Bands of box aspect ratio h/w (Detectron2's anchor convention): [low, high).
RATIO_BANDS = (("h/w < 1/4", 0.0, 0.25), ("1/4 <= h/w < 1/2", 0.25, 0.5), ("1/2 <= h/w < 2", 0.5, 2.0),
               ("2 <= h/w < 4", 2.0, 4.0), ("h/w >= 4", 4.0, math.inf))


@dataclass
class GtBoxes:
    """Ground-truth boxes at the model's input scale. ``boxes``: (N, 4) XYXY in input pixels;
    ``image``: (N,) index of each box's image, non-decreasing; ``padded``: (M, 2) padded input
    (H, W) of each image; ``area``: (N,) w*h of each box in the original image; ``resized``: (M, 2)
    input (H, W) of each image before padding; ``skipped``: boxes of zero or negative size left out."""

    boxes: np.ndarray
    image: np.ndarray
    padded: np.ndarray
    area: np.ndarray
    resized: np.ndarray
    skipped: int = 0

    @property
    def sizes(self) -> np.ndarray:
        """(N,) sqrt(w*h) in input pixels: the size Eq. 1 reads."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return np.sqrt(wh[:, 0] * wh[:, 1])

    @property
    def ratios(self) -> np.ndarray:
        """(N,) aspect ratio h/w of each box, as Detectron2's ASPECT_RATIOS are written."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return wh[:, 1] / wh[:, 0]


def gt_boxes(dataset_dicts, min_size_test=0, max_size_test=0, size_divisibility=32, max_images=0) -> GtBoxes:
    """The non-crowd boxes of positive area in ``dataset_dicts`` (Detectron2 dicts with ``height``,
    ``width``, ``annotations``), each image resized as at test time (ResizeShortestEdge to
    ``min_size_test``, long side <= ``max_size_test``; 0 = no resize) and padded to a multiple of
    ``size_divisibility``. ``max_images`` > 0 keeps that many images, evenly spaced in the list.
    Boxes of zero or negative width or height are counted in ``skipped`` and logged, not used."""
    records = list(dataset_dicts)
    if 0 < max_images < len(records):
        records = [records[i] for i in np.linspace(0, len(records) - 1, max_images).round().astype(int)]
    boxes, image, padded, area, resized, skipped = [], [], [], [], [], 0
    for i, rec in enumerate(records):
        h, w = rec["height"], rec["width"]
        nh, nw = (h, w) if not min_size_test else ResizeShortestEdge.get_output_shape(
            h, w, min_size_test, max_size_test or 10 ** 9)
        resized.append([nh, nw])
        padded.append([math.ceil(v / size_divisibility) * size_divisibility for v in (nh, nw)])
        scale = np.array([nw / w, nh / h, nw / w, nh / h])
        for anno in rec.get("annotations", []):
            if anno.get("iscrowd", 0):
                continue
            box = np.array(BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box * scale), image.append(i), area.append((box[2] - box[0]) * (box[3] - box[1]))
            else:
                skipped += 1
    if skipped:
        logger.warning("%d boxes of zero or negative width or height skipped", skipped)
    logger.info("%d boxes in %d images", len(boxes), len(records))
    return GtBoxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(image, dtype=np.int64),
                   np.asarray(padded, dtype=np.int64).reshape(-1, 2), np.asarray(area, dtype=np.float64),
                   np.asarray(resized, dtype=np.float64).reshape(-1, 2), skipped)


def feature_levels(names: Sequence[str]) -> List[int]:
    """The level k (stride 2**k) of each feature named by its level: "p2" -> 2, "res5" -> 5."""
    return [int(name.lstrip("abcdefghijklmnopqrstuvwxyz_")) for name in names]


def build_anchors(cfg, sizes=None, ratios=None):
    """Detectron2's anchor generator of ``cfg`` (MODEL.ANCHOR_GENERATOR) on the strides of
    MODEL.RPN.IN_FEATURES, as the RPN builds it; ``sizes`` (one per level) replaces SIZES and
    ``ratios`` (one list for every level) ASPECT_RATIOS."""
    if sizes is not None or ratios is not None:
        cfg = cfg.clone()
        cfg.defrost()
        if sizes is not None:
            cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[float(s)] for s in sizes]
        if ratios is not None:
            cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[float(r) for r in ratios]]
    strides = [2 ** k for k in feature_levels(cfg.MODEL.RPN.IN_FEATURES)]
    return build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in strides])


class Coverage(NamedTuple):
    """Per box: ``iou`` (N,) its best anchor IoU, ``level`` (N,) int the level of that anchor, and
    ``positives`` (N,) int the anchors the RPN's matcher labels positive for it (-1 without one)."""

    iou: np.ndarray
    level: np.ndarray
    positives: np.ndarray


def build_matcher(cfg) -> Matcher:
    """The RPN's anchor matcher of ``cfg`` (MODEL.RPN.IOU_THRESHOLDS and IOU_LABELS), as the RPN builds it."""
    return Matcher(cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS, allow_low_quality_matches=True)


def anchor_coverage(gt: GtBoxes, generator, levels: Sequence[int], matcher=None) -> Coverage:
    """For each box, the best IoU with the anchors ``generator`` places on its padded image (a
    feature map of ceil(H/s) x ceil(W/s) cells per stride s, as the pyramid has), the level, from
    ``levels`` (one per generator feature), of that anchor, and, given the RPN's ``matcher``, how
    many anchors it labels positive for the box, matching the image's boxes against all its anchors
    as the RPN does in training (what the RPN's anchor sampler draws its positives from). Image by
    image; the anchors of each padded size are made once."""
    n = len(gt.boxes)
    iou, level, positives = np.zeros(n), np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    cache: Dict[Tuple[int, int], Tuple[Boxes, torch.Tensor]] = {}
    boxes = torch.as_tensor(gt.boxes, dtype=torch.float32)
    images, starts = np.unique(gt.image, return_index=True)
    for i, start, end in zip(images, starts, list(starts[1:]) + [n]):
        hw = tuple(int(v) for v in gt.padded[i])
        if hw not in cache:
            if len(cache) > 64:
                cache.clear()
            grids = [torch.empty(1, 0, math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in generator.strides]
            anchors = generator(grids)
            cache[hw] = Boxes.cat(anchors), torch.as_tensor(np.repeat(levels, [len(a) for a in anchors]))
        anchors, anchor_level = cache[hw]
        quality = pairwise_iou(Boxes(boxes[start:end]), anchors)  # (boxes, anchors)
        best, arg = quality.max(dim=1)
        iou[start:end], level[start:end] = best.numpy(), anchor_level[arg].numpy()
        if matcher is not None:
            matched, labels = matcher(quality)
            positives[start:end] = torch.bincount(matched[labels == 1], minlength=end - start).numpy()
    return Coverage(iou, level, positives)


def nearest_anchor_iou(gt: GtBoxes, sizes, aspect_ratios, levels, offset=0.0) -> Tuple[np.ndarray, np.ndarray]:
    """The figures of :func:`anchor_coverage` for anchors of side ``sizes[j]`` (one per level,
    ``levels[j]``, stride 2**levels[j]) and ``aspect_ratios`` (one list, or one per level), in
    closed form: for two boxes of fixed shapes the IoU can only fall as their centres move apart
    in x or in y, so of each anchor shape the best is the one on the grid point nearest the box
    centre. Fast enough to try many sizes. Returns (N,) best IoU and (N,) its level."""
    ratios = list(aspect_ratios) * len(sizes) if len(aspect_ratios) == 1 else list(aspect_ratios)
    centre = (gt.boxes[:, :2] + gt.boxes[:, 2:]) / 2
    box_area = np.prod(gt.boxes[:, 2:] - gt.boxes[:, :2], axis=1)
    cells_hw = gt.padded[gt.image][:, ::-1].astype(np.float64)  # (W, H) per box
    best = np.zeros((len(sizes), len(gt.boxes)))
    for j, (size, k) in enumerate(zip(sizes, levels)):
        stride = 2.0 ** k
        index = np.clip(np.round(centre / stride - offset), 0, np.ceil(cells_hw / stride) - 1)
        at = (index + offset) * stride
        for r in ratios[j]:
            half = np.array([math.sqrt(size ** 2 / r), r * math.sqrt(size ** 2 / r)]) / 2
            overlap = np.minimum(gt.boxes[:, 2:], at + half) - np.maximum(gt.boxes[:, :2], at - half)
            inter = np.prod(np.clip(overlap, 0, None), axis=1)
            best[j] = np.maximum(best[j], inter / (box_area + 4 * half[0] * half[1] - inter))
    return best.max(axis=0), np.asarray(levels)[best.argmax(axis=0)]


def coverage_table(iou: np.ndarray, area: np.ndarray, thresholds=THRESHOLDS,
                   classes=SIZE_CLASSES) -> Dict[str, Tuple[int, List[float]]]:
    """Per class of ``classes`` (default: COCO's size classes, by original-image ``area``; with
    :data:`RATIO_BANDS` and the boxes' h/w as ``area``, per aspect-ratio band) and "all": (number of
    boxes, [share of them with best anchor IoU >= t for t in ``thresholds``]); NaN for an empty class."""
    table = {}
    for name, low, high in tuple(classes) + (("all", 0.0, math.inf),):
        sel = (area >= low) & (area < high)
        table[name] = (int(sel.sum()), [float((iou[sel] >= t).mean()) if sel.any() else math.nan for t in thresholds])
    return table


def positives_table(positives: np.ndarray, area: np.ndarray) -> Dict[str, Tuple[int, float, float, float]]:
    """Per COCO size class (by original-image ``area``) and "all": (number of boxes, median and mean
    RPN positives per box, the class's share of all positives); NaN for an empty class."""
    table, total = {}, max(int(positives.sum()), 1)
    for name, low, high in SIZE_CLASSES + (("all", 0.0, math.inf),):
        p = positives[(area >= low) & (area < high)]
        stats = (float(np.median(p)), float(p.mean()), float(p.sum() / total)) if len(p) else (math.nan,) * 3
        table[name] = (len(p),) + stats
    return table
