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


@pytest.mark.parametrize("side, level", [(111.0, 2), (112.0, 3), (223.0, 3), (224.0, 4), (447.0, 4), (448.0, 5)])
def test_pred_levels_are_the_eq1_level_of_the_proposal(make_cfg, side, level):
    """At Eq. 1's bin edges (112, 224, 448 px for k0 = 4, canonical 224), in a batch of two
    images of which the second has no proposal: every detection carries its proposal's level."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()
    h = w = 512
    images = torch.zeros(2, 3, h, w)
    with torch.no_grad():
        features = model.backbone(images)
    proposals = []
    for n in (1, 0):
        p = Instances((h, w))
        p.proposal_boxes = Boxes(torch.tensor([[10.0, 20.0, 10.0 + side, 20.0 + side]] * n).view(n, 4))
        p.objectness_logits = torch.zeros(n)
        proposals.append(p)
    with torch.no_grad():
        instances, _ = model.roi_heads(None, features, proposals)
    assert len(instances[0]) > 0
    assert instances[0].pred_levels.tolist() == [level] * len(instances[0])
    assert len(instances[1]) == 0 and instances[1].pred_levels.dtype == torch.int64
