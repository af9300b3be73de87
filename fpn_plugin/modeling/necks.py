"""Necks: the layers that turn the bottom-up maps C2..C5 into the pyramid P2..P6 (or P3..P7).

A neck is a Detectron2 :class:`Backbone` that owns its bottom-up network (as Detectron2's
``FPN`` does), so parameter names are ``bottom_up.*``, ``fpn_lateral{k}``/``fpn_output{k}`` and
``top_block.*`` exactly as in Detectron2's checkpoints. Necks are looked up by name in
:data:`NECK_REGISTRY` (``MODEL.FPN_PAPER.NECK``); :class:`PyramidNeck` states what a registered
neck must do.
"""
import copy
import logging
import math
from typing import Dict, List, Optional, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from fvcore.common.registry import Registry

from ..config import check_choice, check_width

__all__ = [
    "NECK_REGISTRY", "PyramidNeck", "PaperFPN", "BottomUpPyramid", "TopDownNoLateral",
    "FinestLevelOnly", "build_neck", "build_top_block", "level_of", "NORMS", "FUSE_TYPES", "TOP_BLOCKS",
]

logger = logging.getLogger(__name__)

NECK_REGISTRY = Registry("FPN_PAPER_NECK")
NECK_REGISTRY.__doc__ = """
Registry for necks: Backbones built as ``neck(cfg, bottom_up)`` on top of a bottom-up Backbone
(the contract is :class:`PyramidNeck`'s).
"""

#: Values of MODEL.FPN.NORM the necks accept ("" is no normalisation, the paper's setting).
NORMS = ("", "BN", "GN", "SyncBN")
#: Values of MODEL.FPN.FUSE_TYPE: "sum" is the paper's element-wise addition, "avg" its mean.
FUSE_TYPES = ("sum", "avg")
#: Values of MODEL.FPN_PAPER.TOP_BLOCK, the levels above the coarsest input (see build_top_block).
TOP_BLOCKS = ("maxpool", "p6p7_c5", "p6p7_p5", "")


def level_of(stride: int) -> int:
    """Pyramid level of a feature map of the given stride: log2(stride) (stride 16 -> 4)."""
    return int(round(math.log2(stride)))


class PyramidNeck(Backbone):
    """Base class of the necks: a Backbone made of ``bottom_up`` and layers on its outputs.

    The contract of :data:`NECK_REGISTRY`, stated once here. A registered neck is called as
    ``neck(cfg, bottom_up)`` and returns a PyramidNeck. A registered class therefore

    * takes ``bottom_up`` and ``in_features`` (and its own arguments) in its constructor and
      passes the first two to ``PyramidNeck.__init__``, which checks them and sets
      ``self.bottom_up``, ``self.in_features``, ``self.in_strides`` and ``self.in_channels``;
    * reads the config in one place: either ``@configurable`` with ``from_config(cls, cfg,
      bottom_up)`` (as :class:`PaperFPN`), or a constructor ``__init__(self, cfg, bottom_up)``;
    * sets ``self._out_feature_strides`` / ``self._out_feature_channels`` (dicts keyed by
      output name, fine to coarse) and implements :meth:`pyramid`.

    Bad arguments raise ValueError in the constructor, naming the argument and its config key,
    so YAML, LazyConfig and Python users get the same message.
    """

    def __init__(self, bottom_up: Backbone, in_features: List[str]):
        """
        Args:
            bottom_up: the bottom-up Backbone; its outputs named in ``in_features`` feed the neck.
            in_features: names of the bottom-up outputs used, fine to coarse, strides
                doubling from one to the next (e.g. ``["res2", "res3", "res4", "res5"]``).
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"bottom_up must be a detectron2 Backbone, got {type(bottom_up)}")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if not in_features or missing:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES (in_features)={list(in_features)}: {missing or 'empty'} not "
                f"produced by the bottom-up network {type(bottom_up).__name__}, which gives "
                + ", ".join(f"{k} (stride {v.stride})" for k, v in shapes.items())
            )
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])) or any(2 ** level_of(s) != s for s in strides):
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES (in_features)={list(in_features)} have strides {strides}; "
                "each must be a power of two and twice the previous one (fine to coarse, no gaps)"
            )
        self.bottom_up = bottom_up
        self.in_features: List[str] = list(in_features)
        self.in_strides = strides
        self.in_channels = [shapes[f].channels for f in in_features]
        self._size_divisibility: int = strides[-1]

    @property
    def size_divisibility(self) -> int:
        # Images are padded to a multiple of the coarsest input stride, so each top-down x2
        # upsampling lands exactly on the next finer map (any image size >= 1 px works).
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, (N, 3, H, W), H and W multiples of ``size_divisibility``.
        Returns:
            dict of pyramid maps by name, e.g. ``p2`` (N, C, H/4, W/4) ... ``p6`` (N, C, H/64, W/64).
        """
        return self.pyramid(self.bottom_up(x))

    def pyramid(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The neck alone: bottom-up maps by name in, pyramid maps by name out."""
        raise NotImplementedError

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=stride)
            for name, stride in self._out_feature_strides.items()
        }


@NECK_REGISTRY.register()
class PaperFPN(PyramidNeck):
    """The paper's feature pyramid (Sec. 3, Fig. 3).

    For each C_k: a 1x1 lateral conv to ``top_down_channels``; from the coarsest level down,
    M_k = :meth:`merge` (lateral(C_k), M_{k+1}) = lateral(C_k) + nearest-x2-upsample(M_{k+1});
    P_k = 3x3 conv(M_k) to ``out_channels``. No non-linearity anywhere ("there are no
    non-linearities in these extra layers", Sec. 3). Above the coarsest level, the ``top_block``
    (:func:`build_top_block`): by default the paper's P6, P5 subsampled with stride 2 by max-pool
    of kernel 1, as its released code does (Sec. 4.1), for the RPN's largest anchors only.

    Inputs C2..C5 at strides 4..32 (any maps whose strides double, e.g. C3..C5); outputs ``p2..p5``
    (strides 4..32) and the top block's ``p6`` (64) (``p7`` too for RetinaNet's), each
    (N, out_channels, H/stride, W/stride) for padded images (N, 3, H, W).

    The convs are registered under Detectron2's names (``fpn_lateral{k}``, ``fpn_output{k}``,
    ``top_block.p6`` / ``.p7``), so Detectron2's FPN checkpoints load as they are, and are kept in
    top-down order (coarsest first) in the lists ``lateral_convs`` / ``output_convs`` that the
    forward walks, as in Detectron2's FPN, which is what lets the module script as it is.

    The ablations of Sec. 5.1 are subclasses that override one step: :meth:`merge` (rows (d)
    and (e)), or the constructor's ``lateral`` / ``out_levels`` (which convs exist at all).
    """

    @configurable
    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: List[str],
        top_down_channels: int,
        out_channels: int,
        norm: str = "",
        fuse_type: str = "sum",
        top_block: Union[str, nn.Module, None] = "maxpool",
        lateral: bool = True,
        out_levels: Optional[List[str]] = None,
    ):
        """
        Args:
            bottom_up, in_features: see :class:`PyramidNeck`.
            top_down_channels: width of the laterals and of the top-down pathway (paper: 256).
            out_channels: width of the 3x3 output convs, i.e. of every P_k (256; 128 in Sec. 6).
            norm: "" (paper), "BN", "GN" or "SyncBN" after each lateral and output conv.
            fuse_type: "sum" (paper) or "avg" (the mean of the lateral and top-down maps).
            top_block: the levels above the coarsest input: a name of :data:`TOP_BLOCKS` (see
                :func:`build_top_block`), or a module with Detectron2's top-block interface
                (``num_levels``, ``in_feature``: a bottom-up output it reads, else it reads the
                coarsest pyramid map), or None / "" for none.
            lateral: a 1x1 lateral conv on every C_k (False: on C5 only, row (e)).
            out_levels: the P_k to output (default: one per input).

        Raises ValueError naming the argument and its config key for a bad value.
        """
        check_width(top_down_channels, "MODEL.FPN_PAPER.TOP_DOWN_CHANNELS", "top_down_channels")
        check_width(out_channels, "MODEL.FPN_PAPER.OUT_CHANNELS", "out_channels")
        check_choice(norm, NORMS, "MODEL.FPN.NORM", "norm")
        check_choice(fuse_type, FUSE_TYPES, "MODEL.FPN.FUSE_TYPE", "fuse_type")
        super().__init__(bottom_up, in_features)
        levels = [level_of(s) for s in self.in_strides]
        names = [f"p{k}" for k in levels]
        out_levels = list(names if out_levels is None else out_levels)
        bad = [n for n in out_levels if n not in names]
        if bad or not out_levels:
            raise ValueError(f"out_levels={out_levels}: {bad or 'empty'} not among the levels {names}")
        bias = norm == ""  # a norm layer's shift replaces the conv bias
        lateral_convs, output_convs = [], []
        for k, channels in zip(levels, self.in_channels):
            # Detectron2's names, so its FPN checkpoints load as they are. A level without its
            # conv (an ablation) passes its map through unchanged and adds no parameters.
            has_lateral = lateral or k == levels[-1]
            lateral_convs.append(
                self._conv(f"fpn_lateral{k}", channels, top_down_channels, 1, norm, bias) if has_lateral else nn.Identity()
            )
            output_convs.append(
                self._conv(f"fpn_output{k}", top_down_channels, out_channels, 3, norm, bias)
                if f"p{k}" in out_levels else nn.Identity()
            )
        # Plain lists in top-down order (C5 first); the modules are registered above.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.fuse_type = fuse_type
        self.level_names: List[str] = names
        self._out_feature_strides = {f"p{k}": 2 ** k for k in levels if f"p{k}" in out_levels}
        if isinstance(top_block, str):
            top_block = build_top_block(top_block, bottom_up, self.in_features, out_channels)
        self.top_block = top_block
        self.top_block_names: List[str] = []
        self.top_block_from_bottom_up: bool = False
        if top_block is not None:
            self.top_block_from_bottom_up = top_block.in_feature in bottom_up.output_shape()
            if not self.top_block_from_bottom_up and names[-1] not in out_levels:
                raise ValueError(
                    f"top_block={type(top_block).__name__} reads the coarsest pyramid map {names[-1]}, "
                    f"which out_levels={out_levels} leaves out"
                )
            for j in range(1, top_block.num_levels + 1):
                name = f"p{levels[-1] + j}"
                self.top_block_names.append(name)
                self._out_feature_strides[name] = 2 ** (levels[-1] + j)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}

    def __prepare_scriptable__(self):
        """torch.jit.script calls this: TorchScript cannot hold a plain list of modules, so the
        scripted copy holds the same convs in ModuleLists and runs the same forward (as
        Detectron2 prepares its own FPN for scripting). The copy's parameter names are
        ``lateral_convs.i`` / ``output_convs.i``: load weights before scripting."""
        scripted = copy.deepcopy(self)
        scripted.lateral_convs = nn.ModuleList(scripted.lateral_convs)
        scripted.output_convs = nn.ModuleList(scripted.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scripted, name)
        return scripted

    def _conv(self, name, in_channels, out_channels, kernel, norm, bias) -> Conv2d:
        conv = Conv2d(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2,
                      bias=bias, norm=get_norm(norm, out_channels))
        weight_init.c2_xavier_fill(conv)
        self.add_module(name, conv)
        return conv

    @classmethod
    def from_config(cls, cfg, bottom_up):
        top_down, out = fpn_widths(cfg)
        return {
            "bottom_up": bottom_up,
            "in_features": list(cfg.MODEL.FPN.IN_FEATURES),
            "top_down_channels": top_down,
            "out_channels": out,
            "norm": cfg.MODEL.FPN.NORM,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "top_block": cfg.MODEL.FPN_PAPER.TOP_BLOCK,
        }

    def merge(self, lateral: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        """M_k from lateral(C_k) and M_{k+1} (Fig. 3): upsample M_{k+1} x2 by nearest neighbour
        and add (or average, FUSE_TYPE "avg")."""
        up = F.interpolate(coarser, scale_factor=2.0, mode="nearest")
        if self.fuse_type == "avg":
            return (lateral + up) * 0.5
        return lateral + up

    def pyramid(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        top_down = self.in_features[::-1]
        merged = self.lateral_convs[0](features[top_down[0]])  # M5 = 1x1 conv on C5
        results = [self.output_convs[0](merged)]
        for idx, (lateral_conv, output_conv) in enumerate(zip(self.lateral_convs, self.output_convs)):
            if idx > 0:  # the coarsest level is done above (module lists cannot be sliced in TorchScript)
                merged = self.merge(lateral_conv(features[top_down[idx]]), merged)
                results.insert(0, output_conv(merged))
        out: Dict[str, torch.Tensor] = {}
        for name, p in zip(self.level_names, results):
            if name in self._out_feature_strides:
                out[name] = p
        if self.top_block is not None:
            source = features[self.top_block.in_feature] if self.top_block_from_bottom_up else results[-1]
            for name, p in zip(self.top_block_names, self.top_block(source)):
                out[name] = p
        return out


def build_top_block(name: str, bottom_up: Backbone, in_features: List[str], out_channels: int) -> Optional[nn.Module]:
    """The levels above the coarsest input, by MODEL.FPN_PAPER.TOP_BLOCK, as Detectron2's modules
    (so its parameter names ``top_block.p6`` / ``top_block.p7`` and checkpoints carry over):

    * "maxpool": the paper's P6, max-pool of kernel 1 and stride 2 of the coarsest P (P5), for
      the RPN (Detectron2's ``LastLevelMaxPool``);
    * "p6p7_c5": RetinaNet's P6 and P7 from C5, two 3x3 stride-2 convs with a ReLU between them
      (``LastLevelP6P7``, as Detectron2's RetinaNet); C5, the stride-32 map, must be the coarsest input;
    * "p6p7_p5": the same from P5, ``out_channels`` in;
    * "": none (None).
    """
    check_choice(name, TOP_BLOCKS, "MODEL.FPN_PAPER.TOP_BLOCK", "top_block")
    if name == "maxpool":
        return LastLevelMaxPool()
    if name == "p6p7_p5":
        return LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    if name == "p6p7_c5":
        shapes = bottom_up.output_shape()
        coarsest = in_features[-1]
        if shapes[coarsest].stride != 32:
            raise ValueError(
                f"MODEL.FPN_PAPER.TOP_BLOCK (top_block)='p6p7_c5' builds P6/P7 from C5, the stride-32 map, "
                f"but the coarsest of MODEL.FPN.IN_FEATURES={list(in_features)} is {coarsest} at stride "
                f"{shapes[coarsest].stride}; add C5 to the inputs or use 'p6p7_p5'"
            )
        return LastLevelP6P7(shapes[coarsest].channels, out_channels, in_feature=coarsest)
    return None


@NECK_REGISTRY.register()
class BottomUpPyramid(PaperFPN):
    """Ablation (d): the bottom-up pyramid only, P_k = 3x3(1x1(C_k)), no top-down pathway."""

    def merge(self, lateral: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return lateral


@NECK_REGISTRY.register()
class TopDownNoLateral(PaperFPN):
    """Ablation (e): the top-down pathway from C5 without lateral connections (a 1x1 on C5 only)."""

    @classmethod
    def from_config(cls, cfg, bottom_up):
        return {**super().from_config(cfg, bottom_up), "lateral": False}

    def merge(self, lateral: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return F.interpolate(coarser, scale_factor=2.0, mode="nearest")


@NECK_REGISTRY.register()
class FinestLevelOnly(PaperFPN):
    """Ablation (f): the full FPN, but only its finest level P2 is output (no P6)."""

    @classmethod
    def from_config(cls, cfg, bottom_up):
        return {**super().from_config(cfg, bottom_up), "out_levels": ["p2"], "top_block": None}


def fpn_widths(cfg):
    """(top-down width, output width) from the plugin's keys, falling back to MODEL.FPN.OUT_CHANNELS."""
    default = cfg.MODEL.FPN.OUT_CHANNELS
    check_width(default, "MODEL.FPN.OUT_CHANNELS")
    return tuple(default if cfg.MODEL.FPN_PAPER[key] is None else cfg.MODEL.FPN_PAPER[key]
                 for key in ("TOP_DOWN_CHANNELS", "OUT_CHANNELS"))


def build_neck(cfg, bottom_up: Backbone) -> PyramidNeck:
    """Build the neck named by MODEL.FPN_PAPER.NECK on ``bottom_up``."""
    name = cfg.MODEL.FPN_PAPER.NECK
    check_choice(name, sorted(n for n, _ in NECK_REGISTRY), "MODEL.FPN_PAPER.NECK")
    neck = NECK_REGISTRY.get(name)(cfg, bottom_up)
    logger.info("Neck %s: outputs (channels, stride) %s", name, {k: (v.channels, v.stride) for k, v in neck.output_shape().items()})
    return neck
