"""The whole Faster R-CNN: both widths in train and eval, odd image sizes, and checkpoints."""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model, build_resnet_backbone
from detectron2.modeling.backbone import FPN
from detectron2.model_zoo import get_config_file
from detectron2.utils.events import EventStorage

from helpers import inputs




@pytest.mark.parametrize("config", ["Base-FPN-Paper.yaml", "fpn_paper_128.yaml"])
def test_train_step_and_inference(make_cfg, config):
    model = build_model(make_cfg(config, "MODEL.FPN_PAPER.PRED_LEVELS", True))
    width = 128 if "128" in config else 256
    assert model.roi_heads.box_head.fc1.in_features == width * 7 * 7
    assert model.proposal_generator.rpn_head.conv.in_channels == width
    model.train()
    with EventStorage():
        losses = model(inputs((96, 128), (70, 101)))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.fpn_output2.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(inputs((96, 128), boxes=False))
    assert_detections_inside(out[0]["instances"], (96, 128))


@pytest.mark.parametrize("hw", [(32, 32), (33, 45), (61, 97), (200, 33)])
def test_any_image_size_from_32px(make_cfg, hw):
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.PRED_LEVELS", True)).eval()
    with torch.no_grad():
        out = model(inputs(hw, boxes=False))
    assert_detections_inside(out[0]["instances"], hw)


def assert_detections_inside(inst, hw):
    """Detections exist (the small config keeps every score), lie inside the (H, W) image and
    carry a pooled level among P2..P5."""
    boxes = inst.pred_boxes.tensor
    assert len(inst) > 0 and boxes.shape[1] == 4
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= hw[1]).all() and (boxes[:, 1::2] <= hw[0]).all()
    assert inst.pred_levels.dtype == torch.int64 and len(inst.pred_levels) == len(inst)
    assert ((inst.pred_levels >= 2) & (inst.pred_levels <= 5)).all()


def stock_model():
    """Detectron2's own faster_rcnn_R_50_FPN_1x, built on the CPU."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    # An untrained model: keep every score, and normalised pixels so its random weights do not
    # blow the activations up (which leaves no detection to compare).
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    return build_model(cfg).eval(), cfg


def assert_loads_and_matches(model, stock, path, levels):
    """``stock``'s checkpoint at ``path`` loads into ``model`` with nothing missing, unexpected or
    mis-shaped, and both give the pyramid ``levels`` and the detections, bit for bit."""
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(path))
    assert not incompatible.missing_keys
    assert not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    assert model.state_dict().keys() == stock.state_dict().keys()
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        ours, theirs = model.backbone(x), stock.backbone(x)
        assert list(ours) == list(theirs) == levels
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k
        batch = inputs((150, 210), boxes=False)
        a, b = model(batch)[0]["instances"], stock(batch)[0]["instances"]
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_stock_checkpoint_round_trip(make_cfg, tmp_path):
    stock, stock_cfg = stock_model()
    assert isinstance(stock.backbone, FPN)
    path = os.path.join(tmp_path, "stock.pth")
    torch.save({"model": stock.state_dict()}, path)

    cfg = make_cfg("Base-FPN-Paper.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 80, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                   "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]", small=False)
    model = build_model(cfg).eval()
    assert_loads_and_matches(model, stock, path, ["p2", "p3", "p4", "p5", "p6"])


def test_bottom_up_has_detectron2_resnet_names(make_cfg):
    """ImageNet R-50 checkpoints are mapped by Detectron2 onto its ResNet's names; ours are those."""
    cfg = make_cfg("Base-FPN-Paper.yaml", small=False)
    model = build_model(cfg)
    from detectron2.layers import ShapeSpec

    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    ours = {k[len("backbone.bottom_up."):]: v.shape for k, v in model.state_dict().items()
            if k.startswith("backbone.bottom_up.")}
    assert ours == {k: v.shape for k, v in resnet.state_dict().items()}


def test_256_checkpoint_into_128_variant_reports_skipped(make_cfg, tmp_path):
    src = build_model(make_cfg("Base-FPN-Paper.yaml"))
    path = os.path.join(tmp_path, "w256.pth")
    torch.save({"model": src.state_dict()}, path)
    dst = build_model(make_cfg("fpn_paper_128.yaml"))
    checkpointer = DetectionCheckpointer(dst)
    checkpointer.load(path)  # must not raise
    skipped = {k for k, *_ in checkpointer._load_model(torch.load(path)).incorrect_shapes}
    assert {f"backbone.fpn_output{k}.weight" for k in range(2, 6)} <= skipped
    assert "roi_heads.box_head.fc1.weight" in skipped
    assert "backbone.fpn_lateral2.weight" not in skipped  # top-down width is 256 in both
    assert torch.equal(dst.backbone.fpn_lateral2.weight, src.backbone.fpn_lateral2.weight)


def swapped_retinanet_cfg():
    """Detectron2's retinanet_R_50_FPN_1x.yaml with the plugin's backbone named in it."""
    from fpn_plugin.config import add_fpn_paper_config

    cfg = add_fpn_paper_config(get_cfg())
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_paper_backbone"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # an untrained model's scores are ~0.01 (its prior)
    return cfg


def test_retinanet_config_names_the_top_block_it_needs():
    cfg = swapped_retinanet_cfg()
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES=.*\['p7'\] not produced.*TOP_BLOCK 'p6p7_c5'"):
        build_model(cfg)


def test_stock_retinanet_checkpoint_round_trip(tmp_path):
    """Detectron2's RetinaNet R-50-FPN checkpoint loads into the plugin's pyramid with nothing
    missing, unexpected or mis-shaped, and gives the same P3..P7 and detections, bit for bit."""
    stock_cfg = get_cfg()
    stock_cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    stock_cfg.MODEL.DEVICE = "cpu"
    stock_cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    stock = build_model(stock_cfg).eval()
    path = os.path.join(tmp_path, "retinanet.pth")
    torch.save({"model": stock.state_dict()}, path)

    cfg = swapped_retinanet_cfg()
    cfg.MODEL.FPN_PAPER.TOP_BLOCK = "p6p7_c5"
    model = build_model(cfg).eval()
    assert not isinstance(model.backbone, FPN)
    assert_loads_and_matches(model, stock, path, ["p3", "p4", "p5", "p6", "p7"])
