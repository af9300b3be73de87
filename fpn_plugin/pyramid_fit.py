"""Fit the pyramid to a dataset before training.

For a dataset's ground-truth boxes, measured in the pixels the model sees (each image resized as
at test time and padded as the model pads it), this tells which level Eq. 1 pools each box from,
how well the RPN's anchors cover the boxes (the best IoU of each box with the anchors Detectron2's
anchor generator places on the image's grid, per COCO size class), which levels are empty or
overloaded, and which anchor sizes and canonical size would fit the data. Every size here is in
input pixels (after the test-time resize), the unit anchors and Eq. 1 are in.
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
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from .poolers import roi_levels

__all__ = ["GtBoxes", "gt_boxes", "feature_levels", "build_anchors", "anchor_coverage", "nearest_anchor_iou",
           "coverage_table", "level_counts", "level_warnings", "canonical_size_for", "suggest_pyramid",
           "fit_pyramid", "format_report", "SIZE_CLASSES"]

logger = logging.getLogger(__name__)

#: COCO's size classes, by box area w*h in the original image: [low, high) in px^2.
SIZE_CLASSES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
THRESHOLDS = (0.5, 0.7)


@dataclass
class GtBoxes:
    """Ground-truth boxes at the model's input scale. ``boxes``: (N, 4) XYXY in input pixels;
    ``image``: (N,) index of each box's image, non-decreasing; ``padded``: (M, 2) padded input
    (H, W) of each image; ``area``: (N,) w*h of each box in the original image."""

    boxes: np.ndarray
    image: np.ndarray
    padded: np.ndarray
    area: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        """(N,) sqrt(w*h) in input pixels: the size Eq. 1 reads."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return np.sqrt(wh[:, 0] * wh[:, 1])


def gt_boxes(dataset_dicts, min_size_test=0, max_size_test=0, size_divisibility=32, max_images=0) -> GtBoxes:
    """The non-crowd boxes of positive area in ``dataset_dicts`` (Detectron2 dicts with ``height``,
    ``width``, ``annotations``), each image resized as at test time (ResizeShortestEdge to
    ``min_size_test``, long side <= ``max_size_test``; 0 = no resize) and padded to a multiple of
    ``size_divisibility``. ``max_images`` > 0 keeps that many images, evenly spaced in the list."""
    records = list(dataset_dicts)
    if 0 < max_images < len(records):
        records = [records[i] for i in np.linspace(0, len(records) - 1, max_images).round().astype(int)]
    boxes, image, padded, area = [], [], [], []
    for i, rec in enumerate(records):
        h, w = rec["height"], rec["width"]
        nh, nw = (h, w) if not min_size_test else ResizeShortestEdge.get_output_shape(
            h, w, min_size_test, max_size_test or 10 ** 9)
        padded.append([math.ceil(v / size_divisibility) * size_divisibility for v in (nh, nw)])
        scale = np.array([nw / w, nh / h, nw / w, nh / h])
        for anno in rec.get("annotations", []):
            box = np.array(BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64)
            a = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
            if not anno.get("iscrowd", 0) and a > 0:
                boxes.append(box * scale), image.append(i), area.append(a)
    logger.info("%d boxes in %d images", len(boxes), len(records))
    return GtBoxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(image, dtype=np.int64),
                   np.asarray(padded, dtype=np.int64).reshape(-1, 2), np.asarray(area, dtype=np.float64))


def feature_levels(names: Sequence[str]) -> List[int]:
    """The level k (stride 2**k) of each feature named by its level: "p2" -> 2, "res5" -> 5."""
    return [int(name.lstrip("abcdefghijklmnopqrstuvwxyz_")) for name in names]


def build_anchors(cfg, sizes=None):
    """Detectron2's anchor generator of ``cfg`` (MODEL.ANCHOR_GENERATOR) on the strides of
    MODEL.RPN.IN_FEATURES, as the RPN builds it; ``sizes`` (one per level) replaces SIZES."""
    if sizes is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[float(s)] for s in sizes]
    strides = [2 ** k for k in feature_levels(cfg.MODEL.RPN.IN_FEATURES)]
    return build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in strides])


def anchor_coverage(gt: GtBoxes, generator, levels: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """For each box, the best IoU with the anchors ``generator`` places on its padded image (a
    feature map of ceil(H/s) x ceil(W/s) cells per stride s, as the pyramid has) and the level,
    from ``levels`` (one per generator feature), of that anchor. Image by image; the anchors of
    each padded size are made once. Returns (N,) float IoU and (N,) int level."""
    iou, level = np.zeros(len(gt.boxes)), np.zeros(len(gt.boxes), dtype=np.int64)
    cache: Dict[Tuple[int, int], List[Boxes]] = {}
    boxes = torch.as_tensor(gt.boxes, dtype=torch.float32)
    images, starts = np.unique(gt.image, return_index=True)
    for i, start, end in zip(images, starts, list(starts[1:]) + [len(gt.boxes)]):
        hw = tuple(int(v) for v in gt.padded[i])
        if hw not in cache:
            if len(cache) > 64:
                cache.clear()
            grids = [torch.empty(1, 0, math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in generator.strides]
            cache[hw] = generator(grids)
        ious = torch.stack([pairwise_iou(Boxes(boxes[start:end]), a).max(dim=1).values for a in cache[hw]], 1)
        best, arg = ious.max(dim=1)
        iou[start:end], level[start:end] = best.numpy(), np.asarray(levels)[arg.numpy()]
    return iou, level


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


def coverage_table(iou: np.ndarray, area: np.ndarray, thresholds=THRESHOLDS) -> Dict[str, Tuple[int, List[float]]]:
    """Per COCO size class (by original-image ``area``) and "all": (number of boxes, [share of
    them with best anchor IoU >= t for t in ``thresholds``]); shares are NaN for an empty class."""
    table = {}
    for name, low, high in SIZE_CLASSES + (("all", 0.0, math.inf),):
        sel = (area >= low) & (area < high)
        table[name] = (int(sel.sum()), [float((iou[sel] >= t).mean()) if sel.any() else math.nan for t in thresholds])
    return table


def level_counts(sizes: np.ndarray, canonical_level=4, canonical_size=224, min_level=2, max_level=5,
                 rounding="floor") -> Dict[str, int]:
    """Boxes of sqrt(w*h) ``sizes`` per level P{min_level}..P{max_level} by :func:`roi_levels`,
    plus how many of them Eq. 1 put below the finest / above the coarsest level before clamping."""
    boxes = torch.zeros(len(sizes), 4, dtype=torch.float64)
    boxes[:, 2] = boxes[:, 3] = torch.as_tensor(sizes, dtype=torch.float64)
    levels = roi_levels(boxes, canonical_level, canonical_size, min_level, max_level, rounding)
    raw = roi_levels(boxes, canonical_level, canonical_size, -100, 100, rounding)
    counts = {f"P{k}": int((levels == k).sum()) for k in range(min_level, max_level + 1)}
    counts["below P%d (clamped up)" % min_level] = int((raw < min_level).sum())
    counts["above P%d (clamped down)" % max_level] = int((raw > max_level).sum())
    return counts


def level_warnings(counts: Dict[str, int], overloaded=0.5) -> List[str]:
    """One line per level of ``counts`` (from :func:`level_counts`) that pools no box ("empty")
    or more than ``overloaded`` of them ("overloaded"), naming the level and the key to change."""
    per = [(k, v) for k, v in counts.items() if " " not in k]
    total, warnings = sum(v for _, v in per), []
    key = "MODEL.FPN_PAPER.CANONICAL_SIZE"
    for i, (name, n) in enumerate(per):
        finer, coarser = sum(v for _, v in per[:i]), sum(v for _, v in per[i + 1:])
        if n == 0 and total:
            move = "lower" if finer > coarser else "raise" if coarser > finer else "change"
            warnings.append(f"{name} is empty: no box is pooled from it; {move} {key} to move boxes onto it")
        elif total and n > overloaded * total:
            move = "lower" if i == 0 else "raise" if i == len(per) - 1 else "change"
            how = " (lower: boxes move to coarser levels)" if move == "change" else ""
            warnings.append(f"{name} is overloaded: {100.0 * n / total:.0f}% of the boxes are pooled from it "
                            f"(more than {100 * overloaded:.0f}%); {move} {key} to spread them{how}")
    return warnings


def canonical_size_for(smallest_anchor, canonical_level=4, first_level=2, rounding="floor") -> float:
    """The canonical size C that makes Eq. 1 pool a box from the level of the anchor that fits it.

    With one anchor side per level, A_k = A * 2**(k - first_level) on P_k, a box of side s is
    best matched (IoU of centred squares (min/max)**2) by A_k for s in [A_k / sqrt(2), A_k * sqrt(2)):
    the edges are the geometric means of neighbouring anchors. Eq. 1 with floor puts s on P_k for
    s in [C * 2**(k - k0), C * 2**(k - k0 + 1)); equal lower edges give C = A * 2**(k0 - first_level)
    / sqrt(2). With "round" the bins are [C * 2**(k - k0 - 1/2), ...), which gives C = A *
    2**(k0 - first_level). For the paper's anchors (A = 32 on P2, k0 = 4, floor) that is 90.5."""
    return smallest_anchor * 2.0 ** (canonical_level - first_level) / (math.sqrt(2.0) if rounding == "floor" else 1.0)


class Suggestion(NamedTuple):
    """Anchor sides per RPN level (input pixels), the canonical size and k0 of Eq. 1."""

    anchor_sizes: List[int]
    canonical_size: int
    canonical_level: int


def suggest_pyramid(gt: GtBoxes, aspect_ratios, levels, canonical_level=4, rounding="floor", offset=0.0,
                    candidates=None) -> Suggestion:
    """The paper's design fitted to ``gt``: one anchor side per level of ``levels`` (the RPN's),
    doubling (A, 2A, 4A, ...), with ``aspect_ratios``. Of the A in ``candidates`` (default: integers
    on a 2**(1/16) ladder from a quarter of the smallest box to the largest) the one with the most
    boxes at best IoU >= 0.5, ties broken by the share >= 0.7, the mean best IoU, the smaller A.
    The canonical size is :func:`canonical_size_for` A, as an int (the config key's type)."""
    sizes = gt.sizes
    if candidates is None:
        low = math.floor(16 * math.log2(max(sizes.min() / 4, 1.0)))
        high = math.ceil(16 * math.log2(max(sizes.max(), 2.0)))
        candidates = sorted({round(2 ** (j / 16)) for j in range(low, high + 1)})
    scores = {}  # a -> (share >= 0.5, share >= 0.7, mean IoU), compared in that order
    for a in candidates:
        iou, _ = nearest_anchor_iou(gt, [a * 2 ** j for j in range(len(levels))], aspect_ratios, levels, offset)
        scores[a] = (float((iou >= 0.5).mean()), float((iou >= 0.7).mean()), float(iou.mean()))
    best = max(candidates, key=lambda a: scores[a])  # the first maximum: the smaller A on exact ties
    logger.info("smallest anchor %s of %d candidates: IoU>=0.5 %.3f, >=0.7 %.3f", best, len(candidates),
                *scores[best][:2])
    canonical = round(canonical_size_for(best, canonical_level, levels[0], rounding))
    return Suggestion([best * 2 ** j for j in range(len(levels))], max(int(canonical), 1), canonical_level)


def fit_pyramid(cfg, gt: GtBoxes) -> Dict:
    """Everything the level report prints, for ``cfg`` as it is ("now") and with the suggestion
    of :func:`suggest_pyramid` ("suggested"): per setting the anchor sizes, canonical size, Eq. 1
    level counts and warnings, best anchor IoU and level per box, the coverage table, and the
    share of boxes Eq. 1 pools from the level of their best anchor (both clamped to the pooled
    levels of MODEL.ROI_HEADS.IN_FEATURES)."""
    fp, ag = cfg.MODEL.FPN_PAPER, cfg.MODEL.ANCHOR_GENERATOR
    pooled, rpn = feature_levels(cfg.MODEL.ROI_HEADS.IN_FEATURES), feature_levels(cfg.MODEL.RPN.IN_FEATURES)
    rule = dict(canonical_level=fp.CANONICAL_LEVEL, min_level=min(pooled), max_level=max(pooled),
                rounding=fp.LEVEL_ROUNDING)
    suggestion = suggest_pyramid(gt, ag.ASPECT_RATIOS, rpn, fp.CANONICAL_LEVEL, fp.LEVEL_ROUNDING, ag.OFFSET)
    out = {"rule": rule, "suggestion": suggestion, "boxes": gt}
    for name, sizes, canonical in (("now", None, fp.CANONICAL_SIZE),
                                   ("suggested", suggestion.anchor_sizes, suggestion.canonical_size)):
        iou, best_level = anchor_coverage(gt, build_anchors(cfg, sizes), rpn)
        counts = level_counts(gt.sizes, canonical_size=canonical, **rule)
        eq1 = roi_levels(torch.as_tensor(gt.boxes), canonical_size=canonical, **rule).numpy()
        agree = float(np.mean(eq1 == np.clip(best_level, rule["min_level"], rule["max_level"])))
        out[name] = dict(anchor_sizes=sizes or [s for row in ag.SIZES for s in row], canonical_size=canonical,
                         counts=counts, warnings=level_warnings(counts), iou=iou, best_level=best_level,
                         coverage=coverage_table(iou, gt.area), agreement=agree)
    return out


def format_report(fit: Dict, title: str) -> str:
    """The result of :func:`fit_pyramid` as text: the Eq. 1 level table and the anchor coverage
    table, now and suggested, the warnings, and the suggestion as a YAML fragment to paste."""
    now, new, rule, s = fit["now"], fit["suggested"], fit["rule"], fit["suggestion"]
    share = lambda d, k: f"{100.0 * d['counts'][k] / max(len(fit['boxes'].boxes), 1):.1f}%"  # noqa: E731
    pct = lambda v: "-" if math.isnan(v) else f"{100.0 * v:.1f}%"  # noqa: E731
    lines = [title, "", f"Eq. 1 levels (k0={rule['canonical_level']}, {rule['rounding']}): boxes pooled per level", "",
             f"| level | now: canonical {now['canonical_size']} | share | suggested: canonical "
             f"{new['canonical_size']} | share |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {now['counts'][k]} | {share(now, k)} | {new['counts'][k]} | {share(new, k)} |"
              for k in now["counts"]]
    lines += ["", f"Anchor coverage: share of boxes whose best anchor (Detectron2's anchor generator on the padded "
              f"input's grid) has IoU >= 0.5 / >= 0.7. Anchor sides now {now['anchor_sizes']}, suggested "
              f"{new['anchor_sizes']} (input px). Size classes by box area in the original image, as COCO's: "
              "small < 32^2 <= medium < 96^2 <= large.", "",
              "| size class | boxes | now >= 0.5 | now >= 0.7 | suggested >= 0.5 | suggested >= 0.7 |",
              "|---|---|---|---|---|---|"]
    for c, (n, before) in now["coverage"].items():
        after = new["coverage"][c][1]
        lines.append(f"| {c} | {n} | {pct(before[0])} | {pct(before[1])} | {pct(after[0])} | {pct(after[1])} |")
    lines += ["", f"Eq. 1 pools {pct(now['agreement'])} of the boxes from the level of their best anchor now, "
              f"{pct(new['agreement'])} with the suggestion."]
    for name, d in (("now", now), ("suggested", new)):
        lines += ["", f"Warnings ({name}):"] + ([f"- {w}" for w in d["warnings"]] or ["- none"])
    lines += ["", "Suggested config (anchor sides and canonical size in input pixels, i.e. after the test-time "
              "resize; the RPN's levels get one side each, doubling, with the config's aspect ratios):", "",
              "MODEL:", "  ANCHOR_GENERATOR:", f"    SIZES: {[[a] for a in s.anchor_sizes]}", "  FPN_PAPER:",
              f"    CANONICAL_SIZE: {s.canonical_size}", f"    CANONICAL_LEVEL: {s.canonical_level}"]
    return "\n".join(lines)
