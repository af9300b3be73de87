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
    pooler = LevelROIPooler(7, (1 / 4, 1 / 8), 0, "ROIAlignV2", canonical_level=3)
    out = pooler([torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 8)], [Boxes(torch.zeros(0, 4))])
    assert out.shape == (0, 4, 7, 7)


def test_unknown_rounding_is_refused():
    with pytest.raises(ValueError, match="floor"):
        roi_levels(squares(10), rounding="ceil")


# --- one pass over the levels: the same numbers as the per-level loop, to the bit --------------

def per_level_loop(pooler, feats, box_lists):
    """The reference: Detectron2's ROIPooler loop (one nonzero per level) on the pooler's own levels."""
    from detectron2.modeling.poolers import convert_boxes_to_pooler_format

    rois = convert_boxes_to_pooler_format(box_lists)
    level_idx = pooler.levels(box_lists) - pooler.min_level
    out = torch.zeros(len(rois), feats[0].shape[1], *pooler.output_size)
    for i, level_pooler in enumerate(pooler.level_poolers):
        inds = torch.nonzero(level_idx == i).squeeze(1)
        out[inds] = level_pooler(feats[i], rois[inds])
    return out


def edge_boxes(n_random, seed):
    """Squares at Eq. 1's floor and round bin edges and either side of them, plus random boxes."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.tensor([79.0, 80.0, 111.0, 112.0, 158.0, 159.0, 223.0, 224.0, 316.0, 317.0, 447.0, 448.0])
    x0 = torch.rand(len(sides), generator=g) * 40
    edges = torch.stack([x0, x0 + 5, x0 + sides, x0 + 5 + sides], 1)
    xy = torch.rand(n_random, 2, generator=g) * 300
    wh = torch.rand(n_random, 2, generator=g) * 200 + 1
    return torch.cat([edges, torch.cat([xy, xy + wh], 1)])


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign", "ROIPool"])
@pytest.mark.parametrize("rounding", ["floor", "round"])
def test_one_pass_equals_the_per_level_loop_bit_for_bit(pooler_type, rounding):
    pooler = LevelROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 2, pooler_type, level_rounding=rounding)
    feats = [torch.randn(3, 8, 512 // 2 ** k, 512 // 2 ** k) for k in range(2, 6)]
    # the second image has no box at all; only small boxes in the third: P4 and P5 are empty there
    box_lists = [Boxes(edge_boxes(30, 0)), Boxes(torch.zeros(0, 4)), Boxes(squares(20, 30, 60))]
    out = pooler(feats, box_lists)
    assert out.shape == (12 + 30 + 3, 8, 7, 7)
    assert torch.equal(out, per_level_loop(pooler, feats, box_lists))


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIPool"])
def test_floor_rule_equals_detectron2s_roipooler_bit_for_bit(pooler_type):
    from detectron2.modeling.poolers import ROIPooler

    args = (7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, pooler_type)
    feats = [torch.randn(2, 4, 640 // 2 ** k, 640 // 2 ** k) for k in range(2, 6)]
    box_lists = [Boxes(edge_boxes(50, 1)), Boxes(edge_boxes(5, 2))]
    assert torch.equal(LevelROIPooler(*args)(feats, box_lists), ROIPooler(*args)(feats, box_lists))


def test_every_box_on_one_level_and_no_box_at_all():
    pooler = LevelROIPooler(5, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2")
    feats = [torch.full((2, 1, 256 // 2 ** k, 256 // 2 ** k), float(k)) for k in range(2, 6)]
    one_level = [Boxes(squares(230, 240)), Boxes(squares(250))]  # all on P4
    assert pooler(feats, one_level).mean(dim=(1, 2, 3)).tolist() == pytest.approx([4, 4, 4])
    empty = [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]
    assert pooler(feats, empty).shape == (0, 1, 5, 5)
    assert pooler([f[:0] for f in feats], []).shape == (0, 1, 5, 5)  # no image: Detectron2's empty result


def test_indices_by_level_are_the_nonzero_of_each_level():
    from fpn_plugin.modeling.poolers import indices_by_level

    level_idx = torch.tensor([3, 0, 0, 2, 3, 0])
    groups = indices_by_level(level_idx, 4)
    assert [g.tolist() for g in groups] == [[1, 2, 5], [], [3], [0, 4]]
    assert [g.dtype for g in groups] == [torch.int64] * 4


def test_traced_and_scripted_pooler_follow_the_number_of_boxes():
    """A pooler traced on one box count, and a scripted one, pool another count correctly: the
    per-level counts are not frozen into the graph."""
    pooler = LevelROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2").eval()
    feats = [torch.randn(1, 2, 512 // 2 ** k, 512 // 2 ** k) for k in range(2, 6)]

    def run(f2, f3, f4, f5, boxes):
        return pooler([f2, f3, f4, f5], [Boxes(boxes)])

    traced = torch.jit.trace(run, (*feats, squares(50, 300)), check_trace=False)
    scripted = torch.jit.script(pooler)
    other = edge_boxes(7, 3)
    expected = pooler(feats, [Boxes(other)])
    assert torch.equal(traced(*feats, other), expected)
    assert torch.equal(scripted(feats, [Boxes(other)]), expected)


@pytest.mark.parametrize("kwargs, key", [
    ({"canonical_level": 6}, "MODEL.FPN_PAPER.CANONICAL_LEVEL (canonical_level)=6"),
    ({"canonical_level": 4.0}, "MODEL.FPN_PAPER.CANONICAL_LEVEL (canonical_level)=4.0"),
    ({"canonical_box_size": 0}, "MODEL.FPN_PAPER.CANONICAL_SIZE (canonical_box_size)=0"),
    ({"canonical_box_size": float("nan")}, "MODEL.FPN_PAPER.CANONICAL_SIZE (canonical_box_size)=nan"),
    ({"level_rounding": "ceil"}, "MODEL.FPN_PAPER.LEVEL_ROUNDING (level_rounding)='ceil'"),
])
def test_direct_construction_gets_the_config_paths_errors(kwargs, key):
    with pytest.raises(ValueError) as e:
        LevelROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2", **kwargs)
    assert key in str(e.value)
