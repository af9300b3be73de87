"""The plugin's config keys: ``MODEL.FPN_PAPER``, with the paper's defaults, ``MODEL.TIMM`` (a
timm bottom-up) and ``SOLVER.OPTIMIZER``.

Detectron2's own keys keep their meaning (``MODEL.FPN.IN_FEATURES``, ``MODEL.FPN.NORM``,
``MODEL.FPN.FUSE_TYPE``, ``MODEL.FPN.OUT_CHANNELS``, the RPN, anchor and ROI-head keys); the keys
here hold only what Detectron2 has no key for.
"""
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_fpn_paper_config", "load_config", "check_choice", "check_width"]


def add_fpn_paper_config(cfg):
    """Add ``MODEL.FPN_PAPER.*``, ``MODEL.TIMM.*`` and ``SOLVER.OPTIMIZER`` to a Detectron2
    config, in place, and return it.

    Calling it twice is harmless: keys already present keep their values.
    """
    if "OPTIMIZER" not in cfg.SOLVER:
        # "SGD" (Detectron2's: SGD with SOLVER.MOMENTUM) or "ADAMW"; the key and spelling of
        # Detectron2's DETR and MaskFormer projects. Read by fpn_plugin.engine.Trainer.
        cfg.SOLVER.OPTIMIZER = "SGD"
    if "FPN_PAPER" not in cfg.MODEL:
        _add_fpn_paper_keys(cfg)
    if "TIMM" not in cfg.MODEL:
        _add_timm_keys(cfg)
    return cfg


def _add_fpn_paper_keys(cfg):
    _C = cfg.MODEL.FPN_PAPER = CN()
    # The bottom-up network: a builder in Detectron2's BACKBONE_REGISTRY, called (cfg, input_shape).
    # The ResNet of MODEL.RESNETS at any width; "build_timm_backbone" for MODEL.TIMM's.
    _C.BOTTOM_UP = "build_resnet_any_width_backbone"
    # Name in fpn_plugin.NECK_REGISTRY of the layers built on C2..C5 ("PaperFPN": Sec. 3, Fig. 3).
    _C.NECK = "PaperFPN"
    # Levels above the coarsest input: "maxpool" (the paper's P6 for the RPN), "p6p7_c5"
    # (RetinaNet's P6/P7 from C5), "p6p7_p5" (the same from P5) or "" (none).
    _C.TOP_BLOCK = "maxpool"
    # Width d of the 1x1 laterals and the top-down pathway; None: MODEL.FPN.OUT_CHANNELS (d = 256).
    _C.TOP_DOWN_CHANNELS = None
    # Width of the 3x3 output convs, i.e. of P2..P6; None: MODEL.FPN.OUT_CHANNELS (128 in Sec. 6).
    _C.OUT_CHANNELS = None
    # k0 of Eq. 1: the level a canonical-size RoI is pooled from (4, i.e. P4, stride 16).
    _C.CANONICAL_LEVEL = 4
    # The 224 of Eq. 1: canonical RoI size sqrt(wh) in pixels (the ImageNet pre-training size).
    _C.CANONICAL_SIZE = 224
    # Rounding of Eq. 1: "floor" (the paper) or "round" (round to nearest, as Keras Mask R-CNN).
    _C.LEVEL_ROUNDING = "floor"
    # Give each detection the level its RoI was pooled from (Instances field pred_levels). Off,
    # the outputs have Detectron2's fields only, as code that compares or scripts them expects.
    _C.PRED_LEVELS = False
    # Fast path (off by default; not in the paper): speed switches that keep the answers.
    _C.FAST = CN()
    # Run bottom-up and neck in channels-last memory format (faster convs on tensor cores).
    _C.FAST.CHANNELS_LAST = False
    # Autocast bottom-up and neck to "bf16" or "fp16" ("" = fp32); pyramid maps leave as fp32.
    _C.FAST.AUTOCAST = ""


def _add_timm_keys(cfg):
    _T = cfg.MODEL.TIMM = CN()
    # A timm model with features_only, e.g. "convnext_atto", "regnetx_004", "efficientnet_b0".
    _T.NAME = ""
    # A local file of the model's weights (timm's or the original repository's layout); ""
    # starts from random init (no weights are downloaded).
    _T.WEIGHTS = ""
    # Freeze the layers up to the stride-2**k map (0: none; 2: up to res2), as
    # MODEL.BACKBONE.FREEZE_AT does for ResNet.
    _T.FREEZE_AT = 0
    # "" keeps the model's own norm layers; "FrozenBN" freezes its batch norms (fine-tuning
    # from weights at small batch); "SyncBN" syncs them across processes.
    _T.NORM = ""


def load_config(config_file=None, opts=()):
    """The one config loader of every entry point: Detectron2's defaults plus ``MODEL.FPN_PAPER``,
    merged from ``config_file`` (if given) and then from ``opts`` ("KEY", value, ...). A config
    asking for CUDA on a machine without it runs on the CPU.

    Raises FileNotFoundError naming ``config_file`` if it does not exist, and Detectron2's
    KeyError naming the key for an unknown key.
    """
    import torch

    cfg = get_cfg()
    add_fpn_paper_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # the same job runs on a machine without a GPU
    return cfg


def check_choice(value, allowed, key, arg=None):
    """Raise ValueError naming ``key`` (and the constructor argument ``arg``, when given) and the
    allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{_named(key, arg)}={value!r} is not allowed; choose one of {list(allowed)}")


def check_width(value, key, arg=None):
    """Raise ValueError naming ``key`` (and ``arg``) unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{_named(key, arg)}={value!r} must be a positive integer (a channel count)")


def _named(key, arg):
    """How a check names what it checks: the config key, and the constructor argument it reaches
    (``MODEL.FPN.FUSE_TYPE (fuse_type)``), so YAML, LazyConfig and Python users all find it."""
    return key if arg is None else f"{key} ({arg})"
