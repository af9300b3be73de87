"""Fit the pyramid to a dataset before training.

For a dataset's ground-truth boxes, measured in the pixels the model sees (each image resized as
at test time and padded as the model pads it), this tells which level Eq. 1 pools each box from,
how well the RPN's anchors cover the boxes (:mod:`fpn_plugin.analysis.anchor_coverage`: best anchor IoU
and RPN positives per box, per COCO size class), which levels are empty or
overloaded, and which anchor sizes and canonical size would fit the data. Every size here is in
input pixels (after the test-time resize), the unit anchors and Eq. 1 are in.
"""
import logging
import math
from typing import Dict, List, NamedTuple

import numpy as np
import torch

from .anchor_coverage import (RATIO_BANDS, GtBoxes, anchor_coverage, build_anchors, build_matcher, coverage_table,
                              feature_levels, nearest_anchor_iou, positives_table)
from ..modeling.poolers import roi_levels

__all__ = ["level_counts", "level_warnings", "canonical_size_for", "Suggestion", "suggest_pyramid", "suggest_ratios",
           "input_scale_advice", "fit_pyramid", "format_report"]

logger = logging.getLogger(__name__)


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
    """Anchor sides per RPN level (input pixels), the canonical size and k0 of Eq. 1, and the
    aspect ratios (h/w, the same on every level) where the config's do not cover the boxes, else None."""

    anchor_sizes: List[int]
    canonical_size: int
    canonical_level: int
    aspect_ratios: List[float] = None


def suggest_ratios(box_ratios: np.ndarray, config_ratios, outside=0.05, keep=0.95) -> List[float]:
    """Aspect ratios (h/w) for the anchors when more than ``outside`` of the boxes have a ratio no
    ratio of ``config_ratios`` (one list, as the paper's: the same on every level) covers, an anchor
    of ratio r covering h/w within a factor sqrt(2) of r; else None. The suggestion is the config's
    ratios plus the powers of two needed so that the middle ``keep`` of the boxes' ratios are covered."""
    ratios = sorted(float(r) for r in config_ratios)
    if not len(box_ratios):
        return None
    log_r = np.log2(box_ratios)
    covered = np.zeros(len(log_r), dtype=bool)
    for r in ratios:
        covered |= np.abs(log_r - math.log2(r)) <= 0.5 + 1e-9
    if (~covered).mean() <= outside:
        return None
    lo, hi = np.quantile(log_r, [(1 - keep) / 2, (1 + keep) / 2])
    extra = {2.0 ** j for j in range(math.floor(lo + 0.5), math.ceil(hi - 0.5) + 1)}
    return sorted(set(ratios) | extra)


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


def input_scale_advice(gt: GtBoxes, finest_stride: int, min_size_test: int, threshold: float = 0.05):
    """When more than ``threshold`` of the boxes are smaller (sqrt(wh), input px) than one cell of
    the finest map (``finest_stride``), the input scale at which ``threshold`` of them are, as
    {"share": share below a cell now, "stride": ``finest_stride``, "factor": the upscaling f,
    "min_size": the INPUT.MIN_SIZE_TEST / MIN_SIZE_TRAIN that gives it (the images' median short
    side times f, rounded up to a multiple of 32), "pixels_now" / "pixels_then": mean input pixels
    per image}; else None."""
    sizes = gt.sizes
    share = float((sizes < finest_stride).mean()) if len(sizes) else 0.0
    if share <= threshold:
        return None
    factor = finest_stride / float(np.quantile(sizes, threshold))
    short = float(np.median(gt.resized.min(axis=1)))
    pixels = float(np.mean(gt.resized[:, 0] * gt.resized[:, 1]))
    return {"share": share, "stride": finest_stride, "factor": factor, "min_size": int(math.ceil(short * factor / 32) * 32),
            "min_size_now": min_size_test, "pixels_now": pixels, "pixels_then": pixels * factor ** 2}


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
    # One list of ratios for every level is the paper's design; with one list per level the first is read.
    new_ratios = suggest_ratios(gt.ratios, ag.ASPECT_RATIOS[0])
    ratios = [new_ratios] if new_ratios else ag.ASPECT_RATIOS
    suggestion = suggest_pyramid(gt, ratios, rpn, fp.CANONICAL_LEVEL, fp.LEVEL_ROUNDING, ag.OFFSET)._replace(
        aspect_ratios=new_ratios)
    out = {"rule": rule, "suggestion": suggestion, "boxes": gt,
           "input_scale": input_scale_advice(gt, 2 ** min(rpn + pooled), cfg.INPUT.MIN_SIZE_TEST)}
    for name, sizes, canonical, anchor_ratios in (("now", None, fp.CANONICAL_SIZE, None),
                                                  ("suggested", suggestion.anchor_sizes, suggestion.canonical_size,
                                                   new_ratios)):
        generator = build_anchors(cfg, sizes, anchor_ratios)
        iou, best_level, positives = anchor_coverage(gt, generator, rpn, build_matcher(cfg))
        counts = level_counts(gt.sizes, canonical_size=canonical, **rule)
        eq1 = roi_levels(torch.as_tensor(gt.boxes), canonical_size=canonical, **rule).numpy()
        agree = float(np.mean(eq1 == np.clip(best_level, rule["min_level"], rule["max_level"])))
        out[name] = dict(anchor_sizes=sizes or [s for row in ag.SIZES for s in row], canonical_size=canonical,
                         counts=counts, warnings=level_warnings(counts), iou=iou, best_level=best_level,
                         coverage=coverage_table(iou, gt.area), agreement=agree, positives=positives,
                         ratio_coverage=coverage_table(iou, gt.ratios, classes=RATIO_BANDS),
                         aspect_ratios=anchor_ratios or [float(r) for r in ag.ASPECT_RATIOS[0]],
                         positives_table=positives_table(positives, gt.area))
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
    lines += ["", f"Anchor coverage per aspect-ratio band of the boxes (h/w). Ratios now {now['aspect_ratios']}, "
              f"suggested {new['aspect_ratios']}.", "",
              "| h/w band | boxes | now >= 0.5 | now >= 0.7 | suggested >= 0.5 | suggested >= 0.7 |",
              "|---|---|---|---|---|---|"]
    for c, (n, before) in now["ratio_coverage"].items():
        after = new["ratio_coverage"][c][1]
        lines.append(f"| {c} | {n} | {pct(before[0])} | {pct(before[1])} | {pct(after[0])} | {pct(after[1])} |")
    lines += ["", "RPN positives per box: the anchors the RPN's matcher (MODEL.RPN.IOU_THRESHOLDS) labels "
              "positive for it in training, median / mean, and the size class's share of all positives, which "
              "is its share of the positives the RPN samples (MODEL.RPN.BATCH_SIZE_PER_IMAGE).", "",
              "| size class | now median / mean | now share | suggested median / mean | suggested share |",
              "|---|---|---|---|---|"]
    for c, (n, *before) in now["positives_table"].items():
        after = new["positives_table"][c][1:]
        lines.append(f"| {c} | {before[0]:g} / {before[1]:.1f} | {pct(before[2])} | {after[0]:g} / {after[1]:.1f} "
                     f"| {pct(after[2])} |")
    lines += ["", f"Eq. 1 pools {pct(now['agreement'])} of the boxes from the level of their best anchor now, "
              f"{pct(new['agreement'])} with the suggestion."]
    for name, d in (("now", now), ("suggested", new)):
        lines += ["", f"Warnings ({name}):"] + ([f"- {w}" for w in d["warnings"]] or ["- none"])
    scale = fit.get("input_scale")
    if scale:
        lines += ["", f"Input scale: {pct(scale['share'])} of the boxes are smaller than one cell of the finest map "
                  f"(stride {scale['stride']}) at the test scale, where no level can place them. At {scale['factor']:.2f}x the "
                  f"scale 5% are: INPUT.MIN_SIZE_TEST and INPUT.MIN_SIZE_TRAIN {scale['min_size']} (now "
                  f"{scale['min_size_now'] or 'native'}), with MAX_SIZE_TEST / MAX_SIZE_TRAIN raised to match, at "
                  f"about {scale['pixels_then']:.0f} input pixels per image instead of {scale['pixels_now']:.0f} "
                  f"({scale['factor'] ** 2:.1f}x the cost); or crop training images at that scale."]
    lines += ["", "Suggested config (anchor sides and canonical size in input pixels, i.e. after the test-time "
              "resize; the RPN's levels get one side each, doubling, with the config's aspect ratios or the suggested ones):", "",
              "MODEL:", "  ANCHOR_GENERATOR:", f"    SIZES: {[[a] for a in s.anchor_sizes]}"]
    if s.aspect_ratios:
        lines += [f"    ASPECT_RATIOS: {[[round(r, 4) for r in s.aspect_ratios]]}"]
    lines += ["  FPN_PAPER:",
              f"    CANONICAL_SIZE: {s.canonical_size}", f"    CANONICAL_LEVEL: {s.canonical_level}"]
    return "\n".join(lines)
