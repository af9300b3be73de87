"""What several test modules share: paths, the small model's keys, hand-made inputs and a neck
whose output can be computed by hand, and the fixtures every test directory uses (imported into
each conftest.py). Not a test module: nothing here is collected."""
import os
import random

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from fpn_plugin import PaperFPN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
#: The one small config of the suite: its MODEL keys make every test's small model.
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def small_model_opts():
    """The MODEL keys that tests/configs/tiny.yaml sets, as ["MODEL.KEY", value, ...]."""
    import yaml

    with open(TINY) as f:
        model = yaml.safe_load(f)["MODEL"]

    def flat(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(f"{prefix}.{key}", value)
            else:
                yield from (f"{prefix}.{key}", value)

    return list(flat("MODEL", model))


def elements_by_group(optimizer, *keys):
    """(values of ``keys`` in a param group) -> number of parameter elements in such groups, summed
    over the optimizer's groups: what an optimizer applies to how much of the model."""
    out = {}
    for group in optimizer.param_groups:
        key = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in (group[k] for k in keys))
        out[key] = out.get(key, 0) + sum(p.numel() for p in group["params"])
    return out


def inputs(*sizes, boxes=True):
    out = []
    for h, w in sizes:
        d = {"image": torch.randint(0, 256, (3, h, w)).float(), "height": h, "width": w}
        if boxes:
            from detectron2.structures import Boxes, Instances

            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.tensor([[2.0, 3.0, w / 2, h / 2], [w / 3, h / 4, w - 1, h - 2]]))
            inst.gt_classes = torch.tensor([0, 3])
            d["instances"] = inst
        out.append(d)
    return out


def train_step(model, *sizes):
    """One training forward and backward of ``model`` on ``inputs(*sizes)``; asserts the loss is
    finite and returns it."""
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage():
        losses = model(inputs(*sizes))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    return total


class StubBottomUp(Backbone):
    """Declares res2..res5 at strides 4..32 with ``channels`` channels."""

    def __init__(self, channels=1):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        raise NotImplementedError("the tests call the neck's pyramid() on hand-made maps")

    def output_shape(self):
        return {f"res{k}": ShapeSpec(channels=self.channels, stride=2 ** k) for k in range(2, 6)}


def identity_neck(fuse_type="sum"):
    """One channel, laterals = identity 1x1, outputs = identity 3x3, no bias."""
    neck = PaperFPN(
        bottom_up=StubBottomUp(1), in_features=["res2", "res3", "res4", "res5"],
        top_down_channels=1, out_channels=1, fuse_type=fuse_type,
    )
    with torch.no_grad():
        for conv in neck.lateral_convs:
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        for conv in neck.output_convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
    return neck


def hand_inputs():
    c5 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    return {f"res{k}": torch.full((1, 1, 2 ** (6 - k), 2 ** (6 - k)), float(k)) for k in (2, 3, 4)} | {"res5": c5}


@pytest.fixture(scope="session", autouse=True)
def datasets_root(tmp_path_factory):
    """Every dataset the suite loads is generated under a temporary folder, never ./datasets."""
    root = tmp_path_factory.mktemp("datasets")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECTRON2_DATASETS", str(root))
    yield root
    mp.undo()


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def make_cfg():
    """make_cfg(config_name="Base-FPN-Paper.yaml", *opts, small=True): a CPU config; ``small``
    applies the small model of tests/configs/tiny.yaml (ResNet-18, few proposals) so a model
    builds and steps in about a second."""
    import fpn_plugin  # noqa: F401  (registers the plugin's components)
    from fpn_plugin.config import load_config

    def make(config="Base-FPN-Paper.yaml", *opts, small=True):
        small_opts = small_model_opts() if small else []
        return load_config(os.path.join(CONFIGS, config), ["MODEL.DEVICE", "cpu", *small_opts, *opts])

    return make
