"""Necks: the layers that turn the bottom-up maps C2..C5 into the pyramid P2..P6.

A neck is a Detectron2 :class:`Backbone` that owns its bottom-up network (as Detectron2's
``FPN`` does), so parameter names are ``bottom_up.*`` and ``fpn_lateral{k}``/``fpn_output{k}``
exactly as in Detectron2's checkpoints. Necks are looked up by name in :data:`NECK_REGISTRY`;
a user registers their own with ``@NECK_REGISTRY.register()`` and selects it with
``MODEL.FPN_PAPER.NECK``. A registered neck is called as ``neck(cfg, bottom_up)``.
"""
import logging
import math
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import Backbone
from fvcore.common.registry import Registry

from .config import check_choice, check_width

__all__ = [
    "NECK_REGISTRY", "PyramidNeck", "PaperFPN", "BottomUpPyramid", "TopDownNoLateral",
    "FinestLevelOnly", "build_neck", "NORMS", "FUSE_TYPES",
]

logger = logging.getLogger(__name__)

NECK_REGISTRY = Registry("FPN_PAPER_NECK")
NECK_REGISTRY.__doc__ = """
Registry for necks: Backbones built as ``neck(cfg, bottom_up)`` on top of a bottom-up Backbone.
"""

#: Values of MODEL.FPN.NORM the necks accept ("" is no normalisation, the paper's setting).
NORMS = ("", "BN", "GN", "SyncBN")
#: Values of MODEL.FPN_PAPER.FAST.AUTOCAST and the dtypes they mean.
AUTOCAST_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Values of MODEL.FPN.FUSE_TYPE: "sum" is the paper's element-wise addition, "avg" its mean.
FUSE_TYPES = ("sum", "avg")


def level_of(stride: int) -> int:
    """Pyramid level of a feature map of the given stride: log2(stride) (stride 16 -> 4)."""
    return int(round(math.log2(stride)))


class PyramidNeck(Backbone):
    """Base class of the necks: a Backbone made of ``bottom_up`` and layers on its outputs.

    Subclasses set ``self._out_feature_strides`` / ``self._out_feature_channels`` (dicts keyed
    by output name, in fine-to-coarse order) and implement :meth:`pyramid`.
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
                f"MODEL.FPN.IN_FEATURES={list(in_features)}: {missing or 'empty'} not produced by "
                f"the bottom-up network, which gives {list(shapes)} "
                "(set MODEL.RESNETS.OUT_FEATURES to produce more)"
            )
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES={list(in_features)} have strides {strides}; each must "
                "be twice the previous one (fine to coarse, no gaps)"
            )
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.in_strides = strides
        self.in_channels = [shapes[f].channels for f in in_features]
        self._size_divisibility = strides[-1]
        self.channels_last = False
        self.autocast_dtype: Optional[torch.dtype] = None

    def set_fast_path(self, channels_last: bool = False, autocast: str = "") -> "PyramidNeck":
        """Switch the fast path: channels-last memory format and/or autocast ("bf16", "fp16")
        over bottom-up and neck. The pyramid maps are returned in fp32 either way, so the heads
        and every caller see the same types as on the default path."""
        check_choice(autocast, AUTOCAST_DTYPES, "autocast")
        self.channels_last = channels_last
        self.autocast_dtype = AUTOCAST_DTYPES[autocast]
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.pyramid(self.bottom_up(x))
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            out = self.pyramid(self.bottom_up(x))
        return {k: v.float() for k, v in out.items()}

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
    """The paper's feature pyramid (Sec. 3, Fig. 3), and its ablations (Sec. 5.1, Tables 1-2).

    For each C_k: a 1x1 lateral conv to ``top_down_channels``; from the coarsest level down,
    M_k = lateral(C_k) + nearest-x2-upsample(M_{k+1}); P_k = 3x3 conv(M_k) to ``out_channels``.
    No non-linearity anywhere ("there are no non-linearities in these extra layers", Sec. 3).
    P6 (``p6_for_rpn``) is P5 subsampled with stride 2 by max-pool of kernel 1, as the
    paper's released code does (Sec. 4.1); it exists for the RPN's 512^2 anchors only.

    Inputs C2..C5 at strides 4..32; outputs ``p2..p5`` (strides 4..32) and ``p6`` (64),
    each (N, out_channels, H/stride, W/stride) for padded images (N, 3, H, W).
    ``top_down=False`` gives M_k = lateral(C_k) (row (d), bottom-up pyramid only);
    ``lateral=False`` gives M_k = upsample(M_{k+1}) with the 1x1 on C5 only (row (e));
    ``out_levels`` keeps a subset of the outputs, e.g. ``["p2"]`` (row (f)).
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
        p6_for_rpn: bool = True,
        top_down: bool = True,
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
            p6_for_rpn: add P6 = maxpool(P5, kernel 1, stride 2).
            top_down, lateral: keep the top-down pathway / the lateral connections.
            out_levels: the P_k to output (default: one per input); P6 needs p5 among them.
        """
        super().__init__(bottom_up, in_features)
        check_width(top_down_channels, "top_down_channels")
        check_width(out_channels, "out_channels")
        check_choice(norm, NORMS, "norm")
        check_choice(fuse_type, FUSE_TYPES, "fuse_type")
        if not (top_down or lateral):
            raise ValueError("a pyramid needs the top-down pathway or the lateral connections")
        self.levels = [level_of(s) for s in self.in_strides]
        names = [f"p{k}" for k in self.levels]
        out_levels = list(names if out_levels is None else out_levels)
        bad = [n for n in out_levels if n not in names]
        if bad or not out_levels:
            raise ValueError(f"out_levels={out_levels}: {bad or 'empty'} not among the levels {names}")
        bias = norm == ""  # a norm layer's shift replaces the conv bias
        self.lateral_convs: Dict[int, Conv2d] = {}
        self.output_convs: Dict[int, Conv2d] = {}
        for k, channels in zip(self.levels, self.in_channels):
            # Detectron2's names, so its FPN checkpoints load as they are.
            if lateral or k == self.levels[-1]:
                self.lateral_convs[k] = self._conv(f"fpn_lateral{k}", channels, top_down_channels, 1, norm, bias)
            if f"p{k}" in out_levels:
                self.output_convs[k] = self._conv(f"fpn_output{k}", top_down_channels, out_channels, 3, norm, bias)
        self.fuse_type = fuse_type
        self.top_down = top_down
        self.p6_for_rpn = p6_for_rpn and f"p{self.levels[-1]}" in out_levels
        self._out_feature_strides = {f"p{k}": 2 ** k for k in self.levels if f"p{k}" in out_levels}
        if self.p6_for_rpn:
            self._out_feature_strides[f"p{self.levels[-1] + 1}"] = 2 * self.in_strides[-1]
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}

    def _conv(self, name, in_channels, out_channels, kernel, norm, bias) -> Conv2d:
        conv = Conv2d(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2,
                      bias=bias, norm=get_norm(norm, out_channels))
        weight_init.c2_xavier_fill(conv)
        self.add_module(name, conv)
        return conv

    @classmethod
    def from_config(cls, cfg, bottom_up):
        top_down, out = fpn_widths(cfg)
        check_choice(cfg.MODEL.FPN.NORM, NORMS, "MODEL.FPN.NORM")
        check_choice(cfg.MODEL.FPN.FUSE_TYPE, FUSE_TYPES, "MODEL.FPN.FUSE_TYPE")
        return {
            "bottom_up": bottom_up,
            "in_features": list(cfg.MODEL.FPN.IN_FEATURES),
            "top_down_channels": top_down,
            "out_channels": out,
            "norm": cfg.MODEL.FPN.NORM,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
        }

    def merge(self, lateral: torch.Tensor, top_down: torch.Tensor) -> torch.Tensor:
        """Merge of Fig. 3: upsample the coarser map x2 by nearest neighbour and add."""
        up = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
        if self.fuse_type == "avg":
            return (lateral + up) * 0.5
        return lateral + up

    def pyramid(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        top = self.levels[-1]
        merged = {top: self.lateral_convs[top](features[self.in_features[-1]])}  # 1x1 on C5
        for k, name in zip(self.levels[-2::-1], self.in_features[-2::-1]):
            if not self.top_down:
                merged[k] = self.lateral_convs[k](features[name])
            elif k in self.lateral_convs:
                merged[k] = self.merge(self.lateral_convs[k](features[name]), merged[k + 1])
            else:
                merged[k] = F.interpolate(merged[k + 1], scale_factor=2.0, mode="nearest")
        out = {f"p{k}": conv(merged[k]) for k, conv in self.output_convs.items()}
        if self.p6_for_rpn:
            out[f"p{top + 1}"] = F.max_pool2d(out[f"p{top}"], kernel_size=1, stride=2)
        return out

    def __prepare_scriptable__(self):
        """torch.jit.script calls this: TorchScript cannot index modules by a variable key, so
        scripting gets an equivalent module with the convs in ModuleLists (top-down order), as
        Detectron2 does for its own FPN. Parameter names of the scripted copy differ."""
        if not (self.top_down and len(self.lateral_convs) == len(self.levels) == len(self.output_convs)):
            raise NotImplementedError(
                f"{type(self).__name__} (an ablation neck) cannot be scripted; export it by tracing"
            )
        return _ScriptablePaperFPN(self)


class _ScriptablePaperFPN(Backbone):
    """Scripting twin of a full :class:`PaperFPN` (same computation, same output names)."""

    def __init__(self, neck: PaperFPN):
        super().__init__()
        self.bottom_up = neck.bottom_up
        top_down = neck.levels[::-1]
        self.lateral_convs = torch.nn.ModuleList([neck.lateral_convs[k] for k in top_down])
        self.output_convs = torch.nn.ModuleList([neck.output_convs[k] for k in top_down])
        self.in_features_td: List[str] = list(neck.in_features[::-1])
        self.out_names_td: List[str] = [f"p{k}" for k in top_down]
        self.avg: bool = neck.fuse_type == "avg"
        self.p6_name: str = f"p{top_down[0] + 1}" if neck.p6_for_rpn else ""
        self._out_feature_strides = dict(neck._out_feature_strides)
        self._out_feature_channels = dict(neck._out_feature_channels)
        self._out_features = list(neck._out_features)
        self._size_divisibility: int = neck.size_divisibility

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        out: Dict[str, torch.Tensor] = {}
        prev = features[self.in_features_td[0]]
        for i, (lateral, output) in enumerate(zip(self.lateral_convs, self.output_convs)):
            merged = lateral(features[self.in_features_td[i]])
            if i > 0:
                up = F.interpolate(prev, scale_factor=2.0, mode="nearest")
                merged = (merged + up) * 0.5 if self.avg else merged + up
            prev = merged
            out[self.out_names_td[i]] = output(merged)
        if self.p6_name != "":
            out[self.p6_name] = F.max_pool2d(out[self.out_names_td[0]], kernel_size=1, stride=2)
        return out


@NECK_REGISTRY.register()
class BottomUpPyramid(PaperFPN):
    """Ablation (d): the bottom-up pyramid only, P_k = 3x3(1x1(C_k)), no top-down pathway."""

    @classmethod
    def from_config(cls, cfg, bottom_up):
        return {**super().from_config(cfg, bottom_up), "top_down": False}


@NECK_REGISTRY.register()
class TopDownNoLateral(PaperFPN):
    """Ablation (e): the top-down pathway from C5 without lateral connections."""

    @classmethod
    def from_config(cls, cfg, bottom_up):
        return {**super().from_config(cfg, bottom_up), "lateral": False}


@NECK_REGISTRY.register()
class FinestLevelOnly(PaperFPN):
    """Ablation (f): the full FPN, but only its finest level P2 is output (no P6)."""

    @classmethod
    def from_config(cls, cfg, bottom_up):
        return {**super().from_config(cfg, bottom_up), "out_levels": ["p2"], "p6_for_rpn": False}


def fpn_widths(cfg):
    """(top-down width, output width) from the plugin's keys, falling back to MODEL.FPN.OUT_CHANNELS."""
    default = cfg.MODEL.FPN.OUT_CHANNELS
    check_width(default, "MODEL.FPN.OUT_CHANNELS")
    widths = []
    for key in ("TOP_DOWN_CHANNELS", "OUT_CHANNELS"):
        value = cfg.MODEL.FPN_PAPER[key]
        value = default if value is None else value
        check_width(value, f"MODEL.FPN_PAPER.{key}")
        widths.append(value)
    return tuple(widths)


def build_neck(cfg, bottom_up: Backbone) -> PyramidNeck:
    """Build the neck named by MODEL.FPN_PAPER.NECK on ``bottom_up``."""
    name = cfg.MODEL.FPN_PAPER.NECK
    check_choice(name, sorted(NECK_REGISTRY._obj_map), "MODEL.FPN_PAPER.NECK")
    neck = NECK_REGISTRY.get(name)(cfg, bottom_up)
    fast = cfg.MODEL.FPN_PAPER.FAST
    check_choice(fast.AUTOCAST, list(AUTOCAST_DTYPES), "MODEL.FPN_PAPER.FAST.AUTOCAST")
    check_choice(fast.CHANNELS_LAST, [False, True], "MODEL.FPN_PAPER.FAST.CHANNELS_LAST")
    neck.set_fast_path(channels_last=bool(fast.CHANNELS_LAST), autocast=fast.AUTOCAST)
    logger.info("Neck %s: outputs (channels, stride) %s", name, {k: (v.channels, v.stride) for k, v in neck.output_shape().items()})
    return neck
