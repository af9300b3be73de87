"""The fast path's keys build and run on CPU and keep the answers."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from helpers import inputs

# Normalised pixels keep a randomly initialised model's scores away from saturation, so the
# comparison below measures the fast path and not ties between saturated scores.
NORMALISED = ["MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]


def head_outputs(model, image, proposals=None):
    """(pyramid maps, proposals, class probabilities (R, K+1), class-specific boxes (R, 4K)) of
    ``model`` on one image. Given ``proposals``, the box head scores those, so two models are
    compared RoI by RoI and not through NMS, whose choices flip on near-ties."""
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        if proposals is None:
            proposals, _ = model.proposal_generator(images, features)
        heads = model.roi_heads
        boxes = [p.proposal_boxes for p in proposals]
        predictions = heads.box_predictor(heads.box_head(heads.box_pooler([features[f] for f in heads.box_in_features], boxes)))
        return (features, proposals, heads.box_predictor.predict_probs(predictions, proposals)[0],
                heads.box_predictor.predict_boxes(predictions, proposals)[0])


@pytest.mark.parametrize("channels_last, autocast, min_iou, score_tol", [
    (True, "", 0.999, 1e-4),     # same arithmetic in another memory layout
    (False, "bf16", 0.9, 1e-2),  # bf16 keeps 8 mantissa bits: boxes move by ~1%
    (True, "bf16", 0.9, 1e-2),
])
def test_fast_path_matches_fp32(make_cfg, channels_last, autocast, min_iou, score_tol):
    image = torch.randint(0, 256, (3, 256, 320), generator=torch.Generator().manual_seed(0)).float()
    ref_model = build_model(make_cfg("Base-FPN-Paper.yaml", *NORMALISED)).eval()
    fast_model = build_model(make_cfg("Base-FPN-Paper.yaml", *NORMALISED, "MODEL.FPN_PAPER.FAST.CHANNELS_LAST",
                                      channels_last, "MODEL.FPN_PAPER.FAST.AUTOCAST", autocast)).eval()
    fast_model.load_state_dict(ref_model.state_dict())
    assert fast_model.backbone.fast_path == {"channels_last": channels_last, "autocast": autocast}
    assert not hasattr(ref_model.backbone, "fast_path")
    if channels_last:
        assert fast_model.backbone.fpn_output2.weight.is_contiguous(memory_format=torch.channels_last)
    ref_maps, proposals, ref_probs, ref_boxes = head_outputs(ref_model, image)
    fast_maps, _, fast_probs, fast_boxes = head_outputs(fast_model, image, proposals)
    for k in ref_maps:
        assert fast_maps[k].dtype == torch.float32
        rel = float((ref_maps[k] - fast_maps[k]).norm() / ref_maps[k].norm())
        assert rel < (1e-5 if not autocast else 0.03), (k, rel)
    assert (ref_probs - fast_probs).abs().max() <= score_tol
    # The 20 best-scoring RoIs: each one's box for its best class stays where fp32 puts it.
    top = ref_probs[:, :-1].max(1).values.topk(20).indices
    cls = ref_probs[top, :-1].argmax(1)
    pick = lambda b: b.view(len(b), -1, 4)[top, cls]  # noqa: E731
    iou = pairwise_iou(Boxes(pick(ref_boxes)), Boxes(pick(fast_boxes))).diagonal()
    assert (iou >= min_iou).all(), iou


def test_fast_path_trains(make_cfg):
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.FAST.CHANNELS_LAST", True,
                                 "MODEL.FPN_PAPER.FAST.AUTOCAST", "bf16")).train()
    with EventStorage():
        losses = model(inputs((96, 128), (64, 80)))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.fpn_lateral3.weight.grad.dtype == torch.float32
    assert model.backbone.fpn_lateral3.weight.grad.abs().sum() > 0


def test_unknown_autocast_lists_the_choices(make_cfg):
    with pytest.raises(ValueError, match=r"MODEL.FPN_PAPER.FAST.AUTOCAST.*'bf16', 'fp16'"):
        build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.FAST.AUTOCAST", "int8"))
