"""Eq. 1: the RoI-to-level rule at its bin edges, and the pooler that uses it."""
import pytest
import torch
from detectron2.structures import Boxes

from fpn_plugin import LevelROIPooler, roi_levels


def squares(*sides):
    return torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sides])


@pytest.mark.parametrize("k0, expected", [
    # sides:  111 112 223 224 447 448   (floor bins: <112 -> k0-2, <224 -> k0-1, <448 -> k0, else k0+1)
    (4, [2, 3, 3, 4, 4, 5]),
    (3, [2, 2, 2, 3, 3, 4]),  # P2 floor: 111 would be level 1, clamped to 2
    (5, [3, 4, 4, 5, 5, 5]),  # 448 would be level 6, clamped to 5
])
def test_floor_rule_at_bin_edges(k0, expected):
    levels = roi_levels(squares(111, 112, 223, 224, 447, 448), canonical_level=k0)
    assert levels.tolist() == expected


def test_floor_rule_uses_sqrt_of_area():
    # 56 x 224 has sqrt(wh) = 112 -> P3; 50 x 224 has sqrt(wh) = 105.8 -> P2.
    boxes = torch.tensor([[0.0, 0.0, 56.0, 224.0], [0.0, 0.0, 50.0, 224.0]])
    assert roi_levels(boxes).tolist() == [3, 2]


def test_canonical_size_moves_the_edges():
    # With canonical size 112 the edges halve: 56 -> P3, 55 -> P2, 112 -> P4.
    assert roi_levels(squares(55, 56, 111, 112), canonical_size=112).tolist() == [2, 3, 3, 4]


def test_round_rule_at_bin_edges():
    # round(k0 + log2(s/224)): edges at 224 * 2**(j + 1/2) = 79.2, 158.4, 316.8, 633.6 px
    sides = (79, 80, 158, 159, 160, 316, 317, 633, 634)
    levels = roi_levels(squares(*sides), rounding="round", max_level=6)
    assert levels.tolist() == [2, 3, 3, 4, 4, 4, 5, 5, 6]
    # the paper's floor sends the same 160 px box to P3
    assert roi_levels(squares(160)).tolist() == [3]


def test_clamps_tiny_huge_and_degenerate_boxes():
    boxes = torch.cat([squares(1, 5000), torch.tensor([[5.0, 5.0, 5.0, 30.0]])])  # last: zero area
    assert roi_levels(boxes).tolist() == [2, 5, 2]


def test_pooler_pools_each_box_from_its_level():
    """Map of level k is filled with the value k: a pooled RoI's mean says where it came from."""
    pooler = LevelROIPooler(7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
                            pooler_type="ROIAlignV2")
    feats = [torch.full((2, 3, 512 // 2 ** k, 512 // 2 ** k), float(k)) for k in range(2, 6)]
    boxes = [Boxes(squares(111, 112, 223)), Boxes(squares(224, 447, 448))]
    out = pooler(feats, boxes)
    assert out.shape == (6, 3, 7, 7)
    means = out.mean(dim=(1, 2, 3))
    assert means.tolist() == pytest.approx([2, 3, 3, 4, 4, 5])
    assert pooler.levels(boxes).tolist() == [2, 3, 3, 4, 4, 5]


@pytest.mark.parametrize("k0, expected", [(3, [2, 2, 2, 3, 3, 4]), (5, [3, 4, 4, 5, 5, 5])])
def test_pooler_follows_canonical_level(k0, expected):
    pooler = LevelROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIPool", canonical_level=k0)
    feats = [torch.full((1, 1, 512 // 2 ** k, 512 // 2 ** k), float(k)) for k in range(2, 6)]
    out = pooler(feats, [Boxes(squares(111, 112, 223, 224, 447, 448))])
    assert out.mean(dim=(1, 2, 3)).tolist() == pytest.approx(expected)


def test_pooler_with_no_boxes():
    pooler = LevelROIPooler(7, (1 / 4, 1 / 8), 0, "ROIAlignV2")
    out = pooler([torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 8)], [Boxes(torch.zeros(0, 4))])
    assert out.shape == (0, 4, 7, 7)


def test_unknown_rounding_is_refused():
    with pytest.raises(ValueError, match="floor"):
        roi_levels(squares(10), rounding="ceil")
