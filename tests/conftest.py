import os
import random
import warnings

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

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
    """make_cfg(config_name="fpn_paper.yaml", *opts, small=True): a CPU config; ``small``
    swaps in ResNet-18 and few proposals so a model builds and steps in about a second."""
    from detectron2.config import get_cfg

    import fpn_plugin

    def make(config="fpn_paper.yaml", *opts, small=True):
        cfg = get_cfg()
        fpn_plugin.add_fpn_paper_config(cfg)
        cfg.merge_from_file(os.path.join(CONFIGS, config))
        cfg.MODEL.DEVICE = "cpu"
        if small:
            cfg.MODEL.RESNETS.DEPTH = 18
            cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
            cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
            cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
            cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.merge_from_list(list(opts))
        return cfg

    return make
