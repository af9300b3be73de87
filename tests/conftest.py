import os
import random
import warnings

import numpy as np
import pytest
import torch

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


warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation at import


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
