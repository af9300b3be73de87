"""The pyramid fit (fpn_plugin.analysis.pyramid_fit) against direct computations on hand-made box sets."""
import math
import os

import numpy as np
import pytest
import torch
import yaml
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from helpers import CONFIGS
from fpn_plugin.config import load_config
from fpn_plugin.analysis.anchor_coverage import (anchor_coverage, build_anchors, build_matcher, coverage_table, gt_boxes,
                                        nearest_anchor_iou, positives_table)
from fpn_plugin.analysis.pyramid_fit import canonical_size_for, fit_pyramid, format_report, level_counts, level_warnings, suggest_pyramid

LEVELS = [2, 3, 4, 5, 6]  # p2..p6 of the paper's RPN
RATIOS = (0.5, 1.0, 2.0)
PAPER_SIZES = [32, 64, 128, 256, 512]


@pytest.fixture(autouse=True)
def one_thread():
    # The IoU blocks here are small: on a shared CPU, torch's threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cfg():
    # The paper's anchors (32..512 on p2..p6, ratios 0.5/1/2, offset 0), k0 = 4, canonical 224, floor.
    return load_config(os.path.join(CONFIGS, "Base-FPN-Paper.yaml"))


def records(images, size=(256, 256)):
    """One dataset dict per list of (cx, cy, w, h) boxes, in XYWH_ABS as a COCO loader gives."""
    return [{"height": size[0], "width": size[1], "image_id": i,
             "annotations": [{"bbox": [cx - w / 2, cy - h / 2, w, h], "bbox_mode": BoxMode.XYWH_ABS,
                              "category_id": 0, "iscrowd": 0} for cx, cy, w, h in boxes]}
            for i, boxes in enumerate(images)]


def centred_iou(w, h, sizes=PAPER_SIZES, ratios=RATIOS):
    """Best IoU of a w x h box with anchors of ``sizes`` x ``ratios`` centred on it."""
    best = 0.0
    for s in sizes:
        for r in ratios:
            aw = math.sqrt(s * s / r)
            ah = r * aw
            inter = min(w, aw) * min(h, ah)
            best = max(best, inter / (w * h + aw * ah - inter))
    return best


def test_coverage_equals_a_direct_computation(cfg):
    # Square boxes centred on (128, 128), a grid point of every level (strides 4..64, offset 0).
    sides = [16, 24, 32, 45, 64, 100, 200]
    gt = gt_boxes(records([[(128, 128, s, s)] for s in sides]))
    iou, level, _ = anchor_coverage(gt, build_anchors(cfg), LEVELS)
    expected = np.array([centred_iou(s, s) for s in sides])
    np.testing.assert_allclose(iou, expected, atol=1e-6)
    assert iou[sides.index(32)] == pytest.approx(1.0) and iou[sides.index(64)] == pytest.approx(1.0)
    assert iou[sides.index(16)] == pytest.approx(0.25)  # half the side of the 32 anchor
    assert level[sides.index(32)] == 2 and level[sides.index(64)] == 3 and level[sides.index(200)] == 5
    # COCO classes by original area: 16, 24 small; 32 (area 1024 exactly), 45, 64 medium; 100, 200 large.
    table = coverage_table(iou, gt.area)
    for name, sel in (("small", [0, 1]), ("medium", [2, 3, 4]), ("large", [5, 6]), ("all", list(range(7)))):
        n, shares = table[name]
        assert n == len(sel)
        assert shares == [float(np.mean(expected[sel] >= t)) for t in (0.5, 0.7)]
    # By hand: IoU 0.25, 0.5625 | 1, 0.506, 1 | 0.61, 0.61 (squares: (smaller / larger side)^2).
    assert table["small"][1] == [0.5, 0.0] and table["medium"][1] == [1.0, 2 / 3] and table["large"][1] == [1.0, 0.0]


def test_coverage_is_at_the_test_time_scale_and_classes_at_the_original_one(cfg):
    # A 16 px box in a 128 px image, resized to 256: a 32 px box on the P2 grid point (64, 64).
    gt = gt_boxes(records([[(32, 32, 16, 16)]], size=(128, 128)), min_size_test=256, max_size_test=1000)
    iou = anchor_coverage(gt, build_anchors(cfg), LEVELS).iou
    assert iou[0] == pytest.approx(1.0) and gt.sizes[0] == pytest.approx(32.0)
    assert tuple(gt.padded[0]) == (256, 256)
    assert coverage_table(iou, gt.area)["small"][0] == 1  # original area 256 px^2, not 1024


def test_closed_form_equals_detectron2_anchors_on_random_boxes(cfg):
    rng = np.random.default_rng(0)
    images = [[(rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(5, 250), rng.uniform(5, 250))
               for _ in range(5)] for _ in range(6)]
    gt = gt_boxes(records(images, size=(210, 310)), min_size_test=288, max_size_test=400)
    for sizes in (PAPER_SIZES, [11, 22, 44, 88, 176]):
        iou, level, _ = anchor_coverage(gt, build_anchors(cfg, sizes), LEVELS)
        fast_iou, fast_level = nearest_anchor_iou(gt, sizes, [list(RATIOS)], LEVELS)
        np.testing.assert_allclose(fast_iou, iou, atol=1e-5)
        assert (fast_level == level).mean() > 0.9  # exact ties between levels may resolve either way


def test_rpn_positives_per_box_counted_by_hand(cfg):
    # A 32 px and a 128 px square, far apart, each centred on a grid point of every level.
    gt = gt_boxes(records([[(64, 64, 32, 32), (160, 160, 128, 128)]]))
    # FPN: each box has an anchor of its own side on the level of stride side / 8. The same anchor
    # shifted one stride along x or y overlaps it at IoU (7/8) / (9/8) = 0.778 >= 0.7, diagonally
    # 0.62; the other shapes and sizes stay below 0.7 (0.547 and 0.25): 5 positives each.
    fpn = anchor_coverage(gt, build_anchors(cfg), LEVELS, build_matcher(cfg))
    assert fpn.positives.tolist() == [5, 5]
    # Every size on P2 (stride 4, row (f) of Table 1): a 128 anchor shifted by (dx, dy) overlaps the
    # 128 box at (128 - |dx|)(128 - |dy|) / (2 * 128^2 - that), >= 0.7 for |dx| = 0, 4, .., 20 with
    # |dy| <= 20, 16, 12, 8, 4, 0: 11 + 2 * (9 + 7 + 5 + 3 + 1) = 61 anchors; the 32 box keeps 5.
    p2 = cfg.clone()
    p2.MODEL.RPN.IN_FEATURES = ["p2"]
    p2.MODEL.ANCHOR_GENERATOR.SIZES = [PAPER_SIZES]
    one_map = anchor_coverage(gt, build_anchors(p2), [2], build_matcher(p2))
    assert one_map.positives.tolist() == [5, 61]
    assert one_map.iou.tolist() == pytest.approx([1.0, 1.0]) and one_map.level.tolist() == [2, 2]
    # Area 1024 is COCO-medium, 16384 large; shares of the 66 positives.
    table = positives_table(one_map.positives, gt.area)
    assert table["medium"] == (1, 5.0, 5.0, 5 / 66) and table["large"] == (1, 61.0, 61.0, 61 / 66)
    assert table["all"] == (2, 33.0, 33.0, 1.0) and table["small"][0] == 0 and math.isnan(table["small"][1])
    assert (anchor_coverage(gt, build_anchors(cfg), LEVELS).positives == -1).all()  # no matcher, no count


def test_matcher_is_the_one_the_rpn_builds(cfg):
    cfg.MODEL.RPN.IOU_THRESHOLDS = [0.25, 0.65]
    rpn = build_model(cfg).proposal_generator.anchor_matcher
    ours = build_matcher(cfg)
    assert (ours.thresholds, ours.labels, ours.allow_low_quality_matches) == \
        (rpn.thresholds, rpn.labels, rpn.allow_low_quality_matches)
    assert ours.thresholds[1:3] == [0.25, 0.65]


def test_levels_are_those_of_eq1():
    sizes = np.array([5, 20, 50, 111.9, 112, 150, 223, 224, 300, 447, 448, 500, 900, 1000.0])
    for k0, c in ((4, 224), (4, 40), (3, 100)):
        k = np.floor(k0 + np.log2(sizes / c) + 1e-6)
        counts = level_counts(sizes, canonical_level=k0, canonical_size=c)
        for level in (2, 3, 4, 5):
            assert counts[f"P{level}"] == int((np.clip(k, 2, 5) == level).sum())
        assert counts["below P2 (clamped up)"] == int((k < 2).sum())
        assert counts["above P5 (clamped down)"] == int((k > 5).sum())
    counts = level_counts(sizes)
    assert [counts[f"P{k}"] for k in (2, 3, 4, 5)] == [4, 3, 3, 4]


def test_warnings_fire_for_an_empty_and_an_overloaded_level_only():
    extra = {"below P2 (clamped up)": 0, "above P5 (clamped down)": 0}
    assert level_warnings({"P2": 25, "P3": 25, "P4": 25, "P5": 25, **extra}) == []
    assert level_warnings({"P2": 50, "P3": 20, "P4": 20, "P5": 10, **extra}) == []  # 50% is not more than 50%
    (empty,) = level_warnings({"P2": 0, "P3": 30, "P4": 30, "P5": 30, **extra})
    assert empty.startswith("P2 is empty") and "raise MODEL.FPN_PAPER.CANONICAL_SIZE" in empty
    (overloaded,) = level_warnings({"P2": 60, "P3": 20, "P4": 10, "P5": 10, **extra})
    assert overloaded.startswith("P2 is overloaded: 60%") and "lower MODEL.FPN_PAPER.CANONICAL_SIZE" in overloaded
    warnings = level_warnings(level_counts(np.array([20.0, 30.0, 40.0, 50.0, 60.0, 500.0])))
    assert [w.split(" is ")[0] for w in warnings] == ["P2", "P3", "P4"]  # 5 of 6 on P2, none on P3, P4
    assert "overloaded" in warnings[0] and "empty" in warnings[1] and "empty" in warnings[2]


def square_set():
    """16 square boxes of 10..300 px, each centred on (320, 320), a grid point of every level."""
    sides = np.geomspace(10, 300, 16)
    return sides, gt_boxes(records([[(320, 320, s, s)] for s in sides], size=(640, 640)))


@pytest.mark.parametrize("rounding", ["floor", "round"])
def test_suggestion_covers_every_box_and_eq1_pools_from_its_anchor_level(cfg, rounding):
    sides, gt = square_set()
    paper_iou = anchor_coverage(gt, build_anchors(cfg), LEVELS).iou
    assert paper_iou.min() < 0.5  # the paper's anchors miss the 10 px boxes
    s = suggest_pyramid(gt, [list(RATIOS)], LEVELS, canonical_level=4, rounding=rounding)
    a = s.anchor_sizes[0]
    assert s.anchor_sizes == [a, 2 * a, 4 * a, 8 * a, 16 * a] and s.canonical_level == 4
    assert s.canonical_size == round(a * 4 / (math.sqrt(2) if rounding == "floor" else 1))
    iou, best_level, _ = anchor_coverage(gt, build_anchors(cfg, s.anchor_sizes), LEVELS)
    assert iou.min() >= 0.5
    assert min(centred_iou(x, x, s.anchor_sizes) for x in sides) >= 0.5  # the same, by hand
    # Eq. 1 with the suggested canonical size pools each box from the level of its best anchor.
    shift = 0.5 if rounding == "round" else 0.0
    eq1 = np.clip(np.floor(4 + np.log2(sides / s.canonical_size) + shift + 1e-6), 2, 5)
    assert (eq1 == np.clip(best_level, 2, 5)).all()
    assert set(eq1) == {2, 3, 4, 5}


def test_canonical_size_puts_eq1_edges_between_anchors():
    # Floor: P_k starts where the anchor of P_k starts to beat the one of P_{k-1}, at A_k / sqrt(2).
    c = canonical_size_for(32, canonical_level=4, first_level=2, rounding="floor")
    assert c == pytest.approx(32 * 4 / math.sqrt(2))
    for k, anchor in zip((3, 4, 5), (64, 128, 256)):
        assert c * 2.0 ** (k - 4) == pytest.approx(anchor / math.sqrt(2))
    assert canonical_size_for(32, 4, 2, "round") == pytest.approx(128)


def test_report_fragment_pastes_into_a_config(cfg, tmp_path):
    _, gt = square_set()
    fit = fit_pyramid(cfg, gt)
    text = format_report(fit, "squares")
    fragment = text[text.index("MODEL:\n"):]
    path = tmp_path / "suggested.yaml"
    path.write_text(fragment)
    merged = load_config(os.path.join(CONFIGS, "fpn_paper.yaml"), ())
    merged.merge_from_file(str(path))
    s = fit["suggestion"]
    assert yaml.safe_load(fragment)["MODEL"]["ANCHOR_GENERATOR"]["SIZES"] == [[a] for a in s.anchor_sizes]
    assert merged.MODEL.FPN_PAPER.CANONICAL_SIZE == s.canonical_size and merged.MODEL.FPN_PAPER.CANONICAL_LEVEL == 4
    # Before/after figures in the text are those of the coverage computed with each setting.
    assert fit["suggested"]["coverage"]["all"] == (16, [1.0, float(np.mean(fit["suggested"]["iou"] >= 0.7))])
    assert "| all | 16 | " in text and "| P5 | " in text and fit["suggested"]["agreement"] == 1.0
    # RPN positives per box, now and suggested, as their tables hold them.
    _, median, mean, share = fit["suggested"]["positives_table"]["all"]
    assert share == 1.0 and f"| {median:g} / {mean:.1f} | 100.0% |" in text
    # One box per image: none can lose its best anchors to a better-matched neighbour.
    assert (fit["now"]["positives"] >= 1).all()


def test_boxes_skip_crowds_and_empty_boxes_and_subsample_evenly():
    recs = records([[(50, 50, 10, 10)], [(50, 50, 20, 20)], [(50, 50, 30, 30)], [(50, 50, 40, 40)]])
    recs[0]["annotations"].append(dict(recs[0]["annotations"][0], iscrowd=1))
    recs[1]["annotations"].append(dict(recs[1]["annotations"][0], bbox=[5, 5, 0, 10]))
    assert gt_boxes(recs).sizes.tolist() == [10, 20, 30, 40]
    assert gt_boxes(recs, max_images=2).sizes.tolist() == [10, 40]
    assert gt_boxes(recs, max_images=3).sizes.tolist() == gt_boxes(recs, max_images=3).sizes.tolist()


def test_suggested_ratios_cover_the_boxes_they_were_made_from():
    """Boxes of h/w 1/6 and 6 (beyond the paper's 0.5..2, which cover 0.35..2.83): the suggestion
    adds powers of two until every box's ratio is within sqrt(2) of an anchor's."""
    from fpn_plugin.analysis.pyramid_fit import suggest_ratios

    box_ratios = np.array([1 / 6] * 30 + [1.0] * 40 + [6.0] * 30)
    ratios = suggest_ratios(box_ratios, [0.5, 1.0, 2.0])
    assert {0.5, 1.0, 2.0} <= set(ratios)
    for r in box_ratios:
        assert min(abs(math.log2(r / a)) for a in ratios) <= 0.5, r
    # by hand: the middle 95% of log2(h/w) spans -2.58..2.58, so the powers of two from 2**-3 to 2**3
    # (6 is within sqrt(2) of 8, not of 4)
    assert ratios == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    # Boxes the config's ratios already cover (and a few outliers, under 5%) leave them as they are.
    assert suggest_ratios(np.array([0.4] * 50 + [2.5] * 48 + [10.0] * 2), [0.5, 1.0, 2.0]) is None


def test_report_covers_elongated_boxes_with_the_suggested_ratios(cfg):
    # 1:6 and 6:1 boxes centred on a grid point: with the suggested ratios each has an anchor at IoU >= 0.5.
    images = [[(128, 128, 12, 72), (128, 128, 72, 12)], [(128, 128, 24, 144), (128, 128, 144, 24)]]
    fit = fit_pyramid(cfg, gt_boxes(records(images)))
    assert fit["suggestion"].aspect_ratios and max(fit["suggestion"].aspect_ratios) >= 4
    assert fit["suggested"]["ratio_coverage"]["all"][1][0] == 1.0  # all at IoU >= 0.5
    assert fit["now"]["ratio_coverage"]["all"][1][0] < 1.0
    text = format_report(fit, "t")
    assert "ASPECT_RATIOS:" in text and "| h/w >= 4 |" in text
