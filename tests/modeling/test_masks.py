"""Mask R-CNN on the pyramid, and Detectron2's FPN keys (NORM, FUSE_TYPE) meaning the same here."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, BitMasks, Instances
from detectron2.utils.events import EventStorage

import fpn_plugin
from helpers import hand_inputs, identity_neck


def batch(*sizes):
    out = []
    for h, w in sizes:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, w / 2, h / 2], [w / 3, h / 3, w - 2, h - 2]]))
        inst.gt_classes = torch.tensor([1, 4])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 4: h // 2, 4: w // 2] = True
        masks[1, h // 3: h - 2, w // 3: w - 2] = True
        inst.gt_masks = BitMasks(masks)
        out.append({"image": torch.randint(0, 256, (3, h, w)).float(), "instances": inst})
    return out


@pytest.mark.parametrize("config, width", [("fpn_paper_mask.yaml", 128), ("fpn_paper_128.yaml", 128)])
def test_mask_train_step_and_inference(make_cfg, config, width):
    model = build_model(make_cfg(config, "MODEL.MASK_ON", True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))
    assert model.roi_heads.mask_head.mask_fcn1.in_channels == width
    model.train()
    with EventStorage():
        losses = model(batch((96, 128), (80, 90)))
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.mask_fcn1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        inst = model([{"image": batch((96, 128))[0]["image"]}])[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 128)


@pytest.mark.parametrize("k0, expected", [(4, [2, 3, 3, 4, 4, 5]), (3, [2, 2, 2, 3, 3, 4])])
def test_mask_pooler_reads_the_level_eq1_names(make_cfg, k0, expected):
    heads = build_model(make_cfg("fpn_paper_mask.yaml", "MODEL.FPN_PAPER.CANONICAL_LEVEL", k0,
                                 "MODEL.FPN_PAPER.CANONICAL_SIZE", 224)).roi_heads  # the paper's edges
    sides = (111, 112, 223, 224, 447, 448)
    boxes = [Boxes(torch.tensor([[8.0, 8.0, 8.0 + s, 8.0 + s] for s in sides]))]
    feats = [torch.full((1, 2, 512 // 2 ** k, 512 // 2 ** k), float(k)) for k in range(2, 6)]
    for pooler in (heads.mask_pooler, heads.box_pooler):  # one setting drives both
        pooled = pooler(feats, boxes)
        assert pooled.mean(dim=(1, 2, 3)).tolist() == pytest.approx(expected)
    assert heads.mask_pooler.output_size == (14, 14)


def test_avg_fusion_is_half_the_sum():
    s, a = identity_neck("sum").pyramid(hand_inputs()), identity_neck("avg").pyramid(hand_inputs())
    assert torch.equal(a["p5"], s["p5"])             # nothing to fuse at the top
    assert torch.equal(a["p4"], s["p4"] / 2)          # (C4 + up(P5)) / 2
    assert torch.equal(a["p3"], (3 + a["p4"].repeat_interleave(2, -1).repeat_interleave(2, -2)) / 2)


@pytest.mark.parametrize("norm", ["GN", "BN", "SyncBN"])
def test_fpn_norm_on_laterals_and_outputs(make_cfg, norm):
    neck = build_backbone(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN.NORM", norm))
    for k in range(2, 6):
        for conv in (getattr(neck, f"fpn_lateral{k}"), getattr(neck, f"fpn_output{k}")):
            assert conv.norm is not None and conv.bias is None
    if norm == "GN":
        assert isinstance(neck.fpn_output3.norm, torch.nn.GroupNorm) and neck.fpn_output3.norm.num_groups == 32


def test_gn_checkpoint_from_stock_detectron2_loads_with_nothing_missing(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    stock = build_model(cfg)
    path = tmp_path / "gn.pth"
    torch.save({"model": stock.state_dict()}, path)

    fpn_plugin.add_fpn_paper_config(cfg)  # the user's switch: two names, nothing else
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_paper_backbone"
    cfg.MODEL.ROI_HEADS.NAME = "FPNPaperROIHeads"
    ours = build_model(cfg)
    assert "backbone.fpn_lateral2.norm.weight" in ours.state_dict()
    incompatible = DetectionCheckpointer(ours)._load_model(torch.load(path))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = ours.eval().backbone(x), stock.eval().backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("opts, key, allowed", [
    (["MODEL.FPN.NORM", "LayerNormish"], "MODEL.FPN.NORM", "'GN'"),
    (["MODEL.FPN.FUSE_TYPE", "max"], "MODEL.FPN.FUSE_TYPE", "'avg'"),
    (["MODEL.FPN_PAPER.LEVEL_ROUNDING", "ceil"], "MODEL.FPN_PAPER.LEVEL_ROUNDING", "'round'"),
])
def test_unknown_choice_lists_allowed_values(make_cfg, opts, key, allowed):
    with pytest.raises(ValueError) as e:
        build_model(make_cfg("fpn_paper_mask.yaml", *opts))
    assert key in str(e.value) and allowed in str(e.value)


def test_mask_on_with_a_box_only_dataset_fails_at_start_up(make_cfg):
    from train_net import Trainer

    name = "fpn_test_boxes_only"
    DatasetCatalog.register(name, lambda: [{
        "file_name": "unused.jpg", "height": 64, "width": 64, "image_id": 1,
        "annotations": [{"bbox": [1, 1, 20, 20], "bbox_mode": 1, "category_id": 0}],
    }])
    try:
        cfg = make_cfg("fpn_paper_mask.yaml", "DATASETS.TRAIN", f"('{name}',)")
        with pytest.raises(ValueError, match=f"MODEL.MASK_ON.*{name}"):
            Trainer.build_train_loader(cfg)
    finally:
        DatasetCatalog.remove(name)
