"""On a GPU (skipped without one): the level pooler's host synchronisations against Detectron2's,
its output against the per-level loop, and the fast path against fp32 on a fixed input."""
import warnings

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, pairwise_iou

from fpn_plugin import LevelROIPooler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def count_syncs(fn):
    """Host synchronisations ``fn()`` makes, as torch.cuda's sync debug mode reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def boxes_on_every_level(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 400
    wh = torch.rand(n, 2, generator=g) * 500 + 2  # 2..502 px: all of P2..P5
    return torch.cat([xy, xy + wh], 1)


def test_sync_free_pooler_equals_detectron2s_with_fewer_syncs():
    args = (7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2")
    ours, stock = LevelROIPooler(*args).cuda(), ROIPooler(*args).cuda()
    feats = [torch.randn(2, 16, 1024 // 2 ** k, 1024 // 2 ** k, device="cuda") for k in range(2, 6)]
    box_lists = [Boxes(boxes_on_every_level(300, 0).cuda()), Boxes(boxes_on_every_level(200, 1).cuda())]
    a, ours_syncs = count_syncs(lambda: ours(feats, box_lists))
    b, stock_syncs = count_syncs(lambda: stock(feats, box_lists))
    assert torch.equal(a, b)
    # one count of the levels against one nonzero per level (4 here)
    assert ours_syncs < stock_syncs, (ours_syncs, stock_syncs)


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_fast_path_matches_fp32_on_a_fixed_input(make_cfg, autocast):
    opts = ["MODEL.DEVICE", "cuda", "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    ref = build_model(make_cfg("Base-FPN-Paper.yaml", *opts)).eval()
    fast = build_model(make_cfg("Base-FPN-Paper.yaml", *opts, "MODEL.FPN_PAPER.FAST.CHANNELS_LAST", True,
                                "MODEL.FPN_PAPER.FAST.AUTOCAST", autocast)).eval()
    fast.load_state_dict(ref.state_dict())
    image = torch.randint(0, 256, (3, 320, 416), generator=torch.Generator().manual_seed(0)).float().cuda()
    with torch.no_grad():
        images = ref.preprocess_image([{"image": image}])
        a, b = ref.backbone(images.tensor), fast.backbone(images.tensor)
        for k in a:
            assert b[k].dtype == torch.float32
            assert float((a[k] - b[k]).norm() / a[k].norm()) < 0.03, k
        proposals, _ = ref.proposal_generator(images, a)
        top = [p[:50] for p in proposals]
        ra, _ = ref.roi_heads(images, a, top)
        rb, _ = fast.roi_heads(images, b, top)
    assert len(ra[0]) > 0
    iou = pairwise_iou(ra[0].pred_boxes[:20], rb[0].pred_boxes[:20]).max(1).values
    assert (iou > 0.9).all(), iou
