"""A pytest plugin that runs Detectron2's own tests with the plugin swapped in.

Detectron2's FPN backbones (``build_resnet_fpn_backbone``, ``build_retinanet_resnet_fpn_backbone``)
become ``build_resnet_fpn_paper_backbone`` (the RetinaNet one with TOP_BLOCK "p6p7_c5"), and its
``StandardROIHeads`` become ``FPNPaperROIHeads``, by registry name and where a test module names
the class itself. Every other config key keeps Detectron2's value (the plugin's keys get their
defaults: the paper's Eq. 1 and P6). ``model_zoo.get(..., trained=True)`` builds with random weights:
no weights are downloaded; its sample COCO image is an image of
the embedded dataset.

    DETECTRON2_TESTS=/path/to/detectron2/tests
    PYTHONPATH=tools python -m pytest -p detectron2_swap \\
        $DETECTRON2_TESTS/modeling/test_model_e2e.py $DETECTRON2_TESTS/modeling/test_roi_heads.py \\
        $DETECTRON2_TESTS/test_export_torchscript.py $DETECTRON2_TESTS/test_model_analysis.py
"""
import detectron2.export  # noqa: F401  (Detectron2's scripting patches, before any model scripts)
from detectron2 import model_zoo
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY

import fpn_plugin
from fpn_plugin.config import add_fpn_paper_config

SWAPPED_BACKBONES = {"build_resnet_fpn_backbone": "maxpool", "build_retinanet_resnet_fpn_backbone": "p6p7_c5"}
swapped = {"backbones": 0, "roi_heads": 0}


def _with_plugin_keys(cfg, top_block=None):
    cfg = cfg.clone()
    cfg.defrost()
    add_fpn_paper_config(cfg)
    if top_block is not None:
        cfg.MODEL.FPN_PAPER.TOP_BLOCK = top_block
    return cfg


def _paper_backbone(top_block):
    def build(cfg, input_shape):
        swapped["backbones"] += 1
        return fpn_plugin.build_resnet_fpn_paper_backbone(_with_plugin_keys(cfg, top_block), input_shape)
    return build


class SwappedROIHeads(fpn_plugin.FPNPaperROIHeads):
    """FPNPaperROIHeads reading a Detectron2 config that lacks the plugin's keys."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        swapped["roi_heads"] += 1
        return super().from_config(_with_plugin_keys(cfg), input_shape)


def pytest_configure(config):
    for name, top_block in SWAPPED_BACKBONES.items():
        BACKBONE_REGISTRY._obj_map[name] = _paper_backbone(top_block)
    ROI_HEADS_REGISTRY._obj_map["StandardROIHeads"] = SwappedROIHeads
    model_zoo.get = _get_without_weights
    import detectron2.utils.testing

    detectron2.utils.testing.get_sample_coco_image = _sample_image


def _sample_image(tensor=True):
    """Stands in for Detectron2's sample COCO image, which is downloaded when COCO is not on disk:
    image 0 of the embedded validation split, drawn in memory; BGR uint8, (3, H, W) or (H, W, 3)."""
    import numpy as np
    import torch

    from fpn_plugin.data.shapes import SPLITS, draw_image

    bgr = np.ascontiguousarray(np.asarray(draw_image(SPLITS["fpn_shapes_val"], 0)[0])[:, :, ::-1])
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))) if tensor else bgr


def _get_without_weights(config_path, trained=False, device=None):
    """model_zoo.get, random init: neither the trained nor the ImageNet weights are fetched."""
    import torch
    from detectron2.modeling import build_model

    cfg = model_zoo.get_config(config_path, trained=False)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return build_model(cfg)


def pytest_collection_modifyitems(session, config, items):
    from detectron2.modeling import StandardROIHeads

    for module in {item.module for item in items if getattr(item, "module", None)}:
        for attr, value in vars(module).items():
            if value is StandardROIHeads:
                setattr(module, attr, SwappedROIHeads)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"detectron2_swap: built {swapped['backbones']} plugin backbones and {swapped['roi_heads']} plugin ROI heads "
        "in place of Detectron2's"
    )
