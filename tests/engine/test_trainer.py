"""The trainer's optimizer choice (SOLVER.OPTIMIZER)."""
import pytest
import torch
from helpers import elements_by_group

from fpn_plugin.engine import Trainer


def test_sgd_is_detectron2s_optimizer(make_cfg):
    cfg = make_cfg("Base-FPN-Paper.yaml", "SOLVER.BASE_LR", 0.02, "SOLVER.MOMENTUM", 0.8)
    assert cfg.SOLVER.OPTIMIZER == "SGD"  # Detectron2's behaviour is the default
    model = Trainer.build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    assert {g["lr"] for g in opt.param_groups} == {0.02}
    assert {g["momentum"] for g in opt.param_groups} == {0.8}


def test_adamw_takes_detectron2s_parameter_groups_and_clipping(make_cfg):
    cfg = make_cfg(
        "fpn_paper.yaml", "SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", 0.001, "SOLVER.WEIGHT_DECAY", 0.05,
        "SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.WEIGHT_DECAY_BIAS", 0.0,
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e-3,
    )
    model = Trainer.build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["lr"] for g in opt.param_groups} == {0.001}
    # decay 0.05 on conv and fc weights; none on the (trainable, BN) norm layers and on biases
    expected = {(0.0,): 0, (0.05,): 0}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            no_decay = "Norm" in type(module).__name__ or name == "bias"
            expected[(0.0,) if no_decay else (0.05,)] += p.numel()
    assert expected[(0.0,)] > 0 and expected[(0.05,)] > 0
    assert elements_by_group(opt, "weight_decay") == expected
    # one step on a huge gradient: clipped per parameter to norm 1e-3 before AdamW's update
    p = next(model.parameters())
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    p.grad.fill_(1e6)
    opt.step()
    assert p.grad.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_unknown_optimizer_names_the_key(make_cfg):
    cfg = make_cfg("Base-FPN-Paper.yaml", "SOLVER.OPTIMIZER", "Adam")
    model = Trainer.build_model(cfg)
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='Adam' is not allowed; choose one of \['SGD', 'ADAMW'\]"):
        Trainer.build_optimizer(cfg, model)
