"""fpn_plugin: the FPN paper (Lin et al., CVPR 2017) as Detectron2 components.

Importing the package registers the backbones ``build_resnet_fpn_paper_backbone`` and
``build_resnet_any_width_backbone`` (the bottom-up alone), the ROI heads
``FPNPaperROIHeads``, the necks of :data:`NECK_REGISTRY` and the embedded datasets.
"""
from .config import add_fpn_paper_config
from .necks import NECK_REGISTRY, PaperFPN, PyramidNeck, build_neck
from .bottom_up import build_bottom_up, build_resnet_any_width_backbone
from .backbone import build_resnet_fpn_paper_backbone
from .poolers import LevelROIPooler, roi_levels
from .roi_heads import FPNPaperROIHeads
from . import data  # noqa: F401  (registers the embedded datasets)

__all__ = [
    "add_fpn_paper_config",
    "NECK_REGISTRY",
    "PaperFPN",
    "PyramidNeck",
    "build_neck",
    "build_bottom_up",
    "build_resnet_any_width_backbone",
    "build_resnet_fpn_paper_backbone",
    "LevelROIPooler",
    "roi_levels",
    "FPNPaperROIHeads",
]
