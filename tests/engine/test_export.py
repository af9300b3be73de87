"""Whole-model scripting as Detectron2's export tests do it: Faster and Mask R-CNN on the plugin's
pyramid, with Detectron2's usual output fields and with pred_levels added."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.testing import assert_instances_allclose, convert_scripted_instances, reload_script_model
from torch import Tensor

import detectron2.export  # noqa: F401  (before scripting: registers Detectron2's scripting patches)
from detectron2.export import scripting_with_instances

from fpn_plugin.engine.export import script_fields

# Detectron2's tests/test_export_torchscript.py, TestScripting._test_rcnn_model.
DETECTRON2_FIELDS = {"proposal_boxes": Boxes, "objectness_logits": Tensor, "pred_boxes": Boxes, "scores": Tensor,
                     "pred_classes": Tensor}


@pytest.mark.parametrize("mask_on", [False, True], ids=["faster", "mask"])
@pytest.mark.parametrize("with_levels", [False, True], ids=["detectron2-fields", "with-pred_levels"])
def test_whole_model_scripts_like_detectron2s(make_cfg, mask_on, with_levels):
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.MASK_ON", mask_on, "MODEL.FPN_PAPER.PRED_LEVELS", with_levels,
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()
    fields = dict(DETECTRON2_FIELDS, **({"pred_masks": Tensor} if mask_on else {}),
                  **({"pred_levels": Tensor} if with_levels else {}))
    scripted = reload_script_model(scripting_with_instances(model, fields))
    # batch inference with two shapes, as Detectron2's test does
    image = torch.rand(3, 96, 128) * 255
    inputs = [{"image": image}, {"image": torch.nn.functional.interpolate(image[None], scale_factor=0.5)[0]}]
    with torch.no_grad():
        eager = model.inference(inputs, do_postprocess=False)
        ours = scripted.inference(inputs, do_postprocess=False)
    for a, b in zip(eager, ours):
        assert len(a) > 0
        assert_instances_allclose(a, b)  # same fields (pred_levels only when asked for), same values
        if with_levels:
            assert torch.equal(convert_scripted_instances(b).pred_levels, a.pred_levels)


def test_script_fields_follow_the_heads(make_cfg):
    boxes = build_model(make_cfg()).eval()
    masks = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.MASK_ON", True)).eval()
    assert set(script_fields(boxes)) == set(DETECTRON2_FIELDS) | {"pred_levels"}
    assert set(script_fields(masks)) == set(DETECTRON2_FIELDS) | {"pred_levels", "pred_masks"}


def test_levels_on_still_script_with_detectron2s_fields(make_cfg):
    """PRED_LEVELS on, but a user's export code names Detectron2's fields only: the level branch
    compiles away and everything else comes through."""
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.PRED_LEVELS", True,
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()
    scripted = scripting_with_instances(model, DETECTRON2_FIELDS)
    inputs = [{"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        a = model.inference(inputs, do_postprocess=False)[0]
        b = convert_scripted_instances(scripted.inference(inputs, do_postprocess=False)[0])
    assert a.has("pred_levels") and not b.has("pred_levels")
    assert len(a) > 0 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
