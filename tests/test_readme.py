"""The README's examples work as written: its own Backbone under the paper's neck, and its own neck."""
import os
import re

import torch
from detectron2.modeling import build_model

from helpers import ROOT, inputs, train_step


def readme_example(name):
    """The Python block that follows the README's ``<!-- tested: name -->`` marker."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(rf"<!-- tested: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert match, name
    namespace = {}
    exec(compile(match.group(1), f"README.md:{name}", "exec"), namespace)
    return namespace


def train_step_and_infer(model):
    train_step(model, (96, 128), (64, 96))
    model.eval()
    with torch.no_grad():
        return model(inputs((96, 128), boxes=False))[0]["instances"]


def test_readme_bottom_up_example(make_cfg):
    ns = readme_example("custom-bottom-up")
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.BOTTOM_UP", "build_tinynet",
                                 "MODEL.FPN.IN_FEATURES", "['c2', 'c3', 'c4', 'c5']"))
    assert isinstance(model.backbone.bottom_up, ns["TinyNet"])
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {f"p{k}": 2 ** k for k in range(2, 7)}
    train_step_and_infer(model)
    assert model.backbone.bottom_up.stages[0].weight.grad.abs().sum() > 0


def test_readme_neck_example(make_cfg):
    ns = readme_example("custom-neck")
    model = build_model(make_cfg("Base-FPN-Paper.yaml", "MODEL.FPN_PAPER.NECK", "LateralsOnly",
                                 "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
                                 "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256]]"))
    neck = model.backbone
    assert isinstance(neck, ns["LateralsOnly"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = neck(x)
        c = neck.bottom_up(x)
    # P_k is exactly the 1x1 conv of C_k, nothing else
    for conv, (name, p), f in zip(neck.laterals, out.items(), neck.in_features):
        assert torch.allclose(p, conv(c[f]))
    train_step_and_infer(model)
