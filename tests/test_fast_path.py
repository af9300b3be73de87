"""The fast path's keys build and run on CPU and keep the answers."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

from test_model import inputs

# Normalised pixels keep a randomly initialised model's scores away from saturation, so the
# comparison below measures the fast path and not ties between saturated scores.
NORMALISED = ["MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]


def detections(model, image):
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


@pytest.mark.parametrize("channels_last, autocast, min_iou, score_tol", [
    (True, "", 0.999, 1e-4),     # same arithmetic in another memory layout
    (False, "bf16", 0.9, 1e-2),  # bf16 keeps 8 mantissa bits: boxes move by ~1%
    (True, "bf16", 0.9, 1e-2),
])
def test_fast_path_matches_fp32(make_cfg, channels_last, autocast, min_iou, score_tol):
    image = torch.randint(0, 256, (3, 256, 320), generator=torch.Generator().manual_seed(0)).float()
    ref_model = build_model(make_cfg("fpn_paper.yaml", *NORMALISED)).eval()
    fast_model = build_model(make_cfg("fpn_paper.yaml", *NORMALISED, "MODEL.FPN_PAPER.FAST.CHANNELS_LAST",
                                      channels_last, "MODEL.FPN_PAPER.FAST.AUTOCAST", autocast)).eval()
    fast_model.load_state_dict(ref_model.state_dict())
    assert fast_model.backbone.channels_last == channels_last
    if channels_last:
        assert fast_model.backbone.fpn_output2.weight.is_contiguous(memory_format=torch.channels_last)
    ref, fast = detections(ref_model, image), detections(fast_model, image)
    top = ref[:20]
    iou = pairwise_iou(top.pred_boxes, fast.pred_boxes) * (top.pred_classes[:, None] == fast.pred_classes[None, :])
    assert (iou.max(1).values >= min_iou).all()
    assert (ref.scores[:20] - fast.scores[:20]).abs().max() <= score_tol
    x = ref_model.preprocess_image([{"image": image}]).tensor
    with torch.no_grad():
        a, b = ref_model.backbone(x), fast_model.backbone(x)
    for k in a:
        assert b[k].dtype == torch.float32
        rel = float((a[k] - b[k]).norm() / a[k].norm())
        assert rel < (1e-5 if not autocast else 0.03), (k, rel)


def test_fast_path_trains(make_cfg):
    model = build_model(make_cfg("fpn_paper.yaml", "MODEL.FPN_PAPER.FAST.CHANNELS_LAST", True,
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
        build_model(make_cfg("fpn_paper.yaml", "MODEL.FPN_PAPER.FAST.AUTOCAST", "int8"))
