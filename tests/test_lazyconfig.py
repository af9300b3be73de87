"""configs/fpn_paper.py builds the model of configs/fpn_paper.yaml and trains with the LazyConfig loop."""
import os

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model

from helpers import CONFIGS, elements_by_group


def test_lazy_model_equals_yaml_model(make_cfg):
    lazy = LazyConfig.load(os.path.join(CONFIGS, "fpn_paper.py"))
    lazy.train.device = "cpu"
    a = instantiate(lazy.model)
    b = build_model(make_cfg("fpn_paper.yaml", small=False))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    assert type(a.roi_heads) is type(b.roi_heads)
    pa, pb = a.roi_heads.box_pooler, b.roi_heads.box_pooler
    assert (pa.canonical_level, pa.canonical_box_size, pa.level_rounding) == (pb.canonical_level, pb.canonical_box_size, pb.level_rounding)
    assert a.proposal_generator.post_nms_topk == b.proposal_generator.post_nms_topk
    # The RoI sampling of the training step, which no parameter shape shows.
    sampling = [(h.batch_size_per_image, h.positive_fraction) for h in (a.roi_heads, b.roi_heads)]
    assert sampling[0] == sampling[1] == (64, 0.5)
    assert a.pixel_std.tolist() == b.pixel_std.tolist()


def test_lazy_optimizer_equals_yaml_optimizer(make_cfg):
    from fpn_plugin.engine import Trainer

    lazy = LazyConfig.load(os.path.join(CONFIGS, "fpn_paper.py"))
    cfg = make_cfg("fpn_paper.yaml")
    model = build_model(cfg)
    lazy.optimizer.params.model = model
    a, b = instantiate(lazy.optimizer), Trainer.build_optimizer(cfg, model)
    assert isinstance(a, torch.optim.AdamW) and isinstance(b, torch.optim.AdamW)
    keys = ("lr", "weight_decay", "betas")
    assert elements_by_group(a, *keys) == elements_by_group(b, *keys)
    # decoupled decay on conv and fc weights only: every 1-d tensor (biases, norm) has none
    for group in a.param_groups:
        if any(p.dim() == 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] > 0.0


def test_lazy_config_trains_two_iterations(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    lazy = LazyConfig.load(os.path.join(CONFIGS, "fpn_paper.py"))
    lazy.dataloader.train.dataset.dataset_dicts.names = "fpn_shapes_tiny_train"
    lazy.dataloader.train.total_batch_size = 2
    lazy.dataloader.train.num_workers = 0
    lazy.dataloader.train.mapper.augmentations = []
    lazy.model.proposal_generator.post_nms_topk = (64, 64)
    lazy.model.roi_heads.batch_size_per_image = 32
    model = instantiate(lazy.model)
    lazy.optimizer.params.model = model
    optimizer = instantiate(lazy.optimizer)
    trainer = SimpleTrainer(model, instantiate(lazy.dataloader.train), optimizer)
    before = model.backbone.fpn_output2.weight.detach().clone()
    trainer.train(0, 2)
    assert not torch.equal(before, model.backbone.fpn_output2.weight)  # the steps reached the neck
