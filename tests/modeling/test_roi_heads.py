"""ROI heads: Eq. 1 settings reach every pooler; bad settings fail at build time by key."""
import pytest
import torch
from detectron2.modeling import build_model

from fpn_plugin import FPNPaperROIHeads, LevelROIPooler


def test_poolers_take_the_configured_rule(make_cfg):
    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.CANONICAL_LEVEL", 3,
                   "MODEL.FPN_PAPER.CANONICAL_SIZE", 112, "MODEL.FPN_PAPER.LEVEL_ROUNDING", "round",
                   "MODEL.MASK_ON", True)
    heads = build_model(cfg).roi_heads
    assert isinstance(heads, FPNPaperROIHeads)
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert isinstance(pooler, LevelROIPooler)
        assert (pooler.canonical_level, pooler.canonical_box_size, pooler.level_rounding) == (3, 112, "round")
        assert (pooler.min_level, pooler.max_level) == (2, 5)  # P2..P5, never P6


def test_box_head_is_two_1024_fc_with_relu(make_cfg):
    head = build_model(make_cfg()).roi_heads.box_head
    assert [m.out_features for m in (head.fc1, head.fc2)] == [1024, 1024]
    assert head.fc1.in_features == 256 * 7 * 7
    assert not hasattr(head, "conv1")


@pytest.mark.parametrize("opts, key", [
    (["MODEL.FPN_PAPER.CANONICAL_LEVEL", 6], "MODEL.FPN_PAPER.CANONICAL_LEVEL"),
    (["MODEL.FPN_PAPER.CANONICAL_LEVEL", 1], "MODEL.FPN_PAPER.CANONICAL_LEVEL"),
    (["MODEL.FPN_PAPER.CANONICAL_SIZE", 0], "MODEL.FPN_PAPER.CANONICAL_SIZE"),
    (["MODEL.FPN_PAPER.LEVEL_ROUNDING", "ceil"], "MODEL.FPN_PAPER.LEVEL_ROUNDING"),
    (["MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']"], "MODEL.ROI_HEADS.IN_FEATURES"),
    (["MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'res9']"], "MODEL.ROI_HEADS.IN_FEATURES"),
    (["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIMagic"], "MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
    (["MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128]]"], "MODEL.ANCHOR_GENERATOR.SIZES"),
    (["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0], [0.5, 1.0]]"], "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
    (["MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p7']"], "MODEL.RPN.IN_FEATURES"),
])
def test_bad_head_config_names_the_key(make_cfg, opts, key):
    with pytest.raises(ValueError) as e:
        build_model(make_cfg("Base-FPN-Paper.yaml", *opts))
    assert key in str(e.value)


def test_canonical_level_error_names_the_pooled_levels(make_cfg):
    with pytest.raises(ValueError, match=r"pooled levels 2\.\.5"):
        build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.CANONICAL_LEVEL", 6))


def test_unknown_rounding_lists_the_choices(make_cfg):
    with pytest.raises(ValueError, match=r"\['floor', 'round'\]"):
        build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.LEVEL_ROUNDING", "ceil"))


def _edge_proposals(size, boxes):
    from detectron2.structures import Boxes, Instances

    inst = Instances((size, size))
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.objectness_logits = torch.zeros(len(boxes))
    return inst


def test_levels_at_the_bin_edges_per_image_of_a_batch(make_cfg):
    """Each detection's level is the Eq. 1 level of the proposal it was regressed from, at the
    bin edges 112, 224, 448 px, for each image of a batch, and for an image with no proposals."""
    from detectron2.structures import Boxes, pairwise_iou

    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.FPN_PAPER.PRED_LEVELS", True)
    model = build_model(cfg).eval()
    sides = [111.9, 112.0, 223.9, 224.0, 447.9, 448.0]
    expected = [2, 3, 3, 4, 4, 5]
    corners = [(10, 10), (140, 10), (270, 10), (510, 10), (10, 500), (480, 500)]
    first = [[x, y, x + s, y + s] for (x, y), s in zip(corners, sides)]
    second = first[::-1][1:]  # another order and count: levels must follow each image's proposals
    size = 1000
    features = {f"p{k}": torch.randn(3, 256, size // 2 ** k, size // 2 ** k) for k in (2, 3, 4, 5, 6)}
    proposals = [_edge_proposals(size, first), _edge_proposals(size, second), _edge_proposals(size, [])]
    with torch.no_grad():
        results, _ = model.roi_heads(None, features, proposals)
    for result, boxes, levels in zip(results, (first, second), (expected, expected[::-1][1:])):
        assert len(result) > 0 and result.pred_levels.dtype == torch.int64
        # the untrained box regressor barely moves a box: its proposal is the one it overlaps most
        source = pairwise_iou(result.pred_boxes, Boxes(torch.tensor(boxes))).argmax(1)
        assert torch.equal(result.pred_levels, torch.tensor(levels)[source])
    assert len(results[2]) == 0 and results[2].pred_levels.shape == (0,)


def test_without_pred_levels_the_outputs_have_detectron2s_fields(make_cfg):
    """PRED_LEVELS off (the default): the detections have exactly StandardROIHeads' fields, and
    with Eq. 1's paper settings (k0 4, 224, floor) the same values as Detectron2's heads."""
    from detectron2.modeling import StandardROIHeads

    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    model = build_model(cfg).eval()
    stock = StandardROIHeads(cfg, model.backbone.output_shape()).eval()
    stock.load_state_dict(model.roi_heads.state_dict())
    size = 256
    features = {f"p{k}": torch.randn(1, 256, size // 2 ** k, size // 2 ** k) for k in (2, 3, 4, 5, 6)}
    with torch.no_grad():
        ours, _ = model.roi_heads(None, features, [_edge_proposals(size, [[10, 10, 60, 70], [5, 5, 200, 180]])])
        theirs, _ = stock(None, features, [_edge_proposals(size, [[10, 10, 60, 70], [5, 5, 200, 180]])])
    assert len(ours[0]) > 0
    assert sorted(ours[0].get_fields()) == sorted(theirs[0].get_fields()) == ["pred_boxes", "pred_classes", "scores"]
    assert torch.equal(ours[0].pred_boxes.tensor, theirs[0].pred_boxes.tensor)
    assert torch.equal(ours[0].scores, theirs[0].scores)
