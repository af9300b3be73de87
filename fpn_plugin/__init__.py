"""fpn_plugin: the FPN paper (Lin et al., CVPR 2017) as Detectron2 components.

Importing the package registers the backbones ``build_resnet_fpn_paper_backbone`` (the pyramid
on any registered bottom-up), ``build_resnet_any_width_backbone`` and ``build_timm_backbone``
(bottom-ups: ResNet at any width, a timm model), the ROI heads
``FPNPaperROIHeads``, the necks of :data:`NECK_REGISTRY` and the embedded datasets.

Layout: :mod:`fpn_plugin.modeling` (bottom-ups, necks, poolers, heads), :mod:`fpn_plugin.analysis`
(pyramid fit, anchor coverage, pictures), :mod:`fpn_plugin.engine` (trainer, checkpointer,
inference, export), :mod:`fpn_plugin.data` (the embedded dataset and its checks).
"""
from .config import add_fpn_paper_config
from .modeling.necks import NECK_REGISTRY, PaperFPN, PyramidNeck, build_neck
from .modeling.bottom_up import build_bottom_up, build_resnet_any_width_backbone
from .modeling.backbone import build_resnet_fpn_paper_backbone
from .modeling.timm_backbone import TimmBackbone, build_timm_backbone
from .modeling.poolers import LevelROIPooler, roi_levels
from .modeling.roi_heads import FPNPaperROIHeads
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
    "build_timm_backbone",
    "TimmBackbone",
    "LevelROIPooler",
    "roi_levels",
    "FPNPaperROIHeads",
]
