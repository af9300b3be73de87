"""A timm model as the bottom-up pathway: ``build_timm_backbone``, configured by ``MODEL.TIMM``.

Any timm model that has ``features_only`` works: its feature maps are read from timm's own
``feature_info`` (channels and reduction), never from a list of known names, and named by level
the way Detectron2's ResNet names its stages, ``res{k}`` for stride 2**k (``res2``..``res5`` for
strides 4..32), so a config swaps bottom-ups without touching ``MODEL.FPN.IN_FEATURES``.

timm is an optional dependency (tools/setup_env.sh installs it, held to the installed torch).
"""
import difflib
import logging
import os
from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..config import check_choice
from .necks import level_of

__all__ = ["TimmBackbone", "build_timm_backbone", "TIMM_NORMS", "TIMM_VERSION"]

logger = logging.getLogger(__name__)

#: Values of MODEL.TIMM.NORM.
TIMM_NORMS = ("", "FrozenBN", "SyncBN")
#: The timm release the project is tested with (tools/setup_env.sh installs it).
TIMM_VERSION = "1.0.31"


def _import_timm():
    try:
        import timm
    except ImportError as e:
        import torch as _torch

        raise ImportError(
            "MODEL.FPN_PAPER.BOTTOM_UP='build_timm_backbone' needs timm, which is not installed; install it "
            f"with: bash tools/setup_env.sh   (or: pip install 'timm=={TIMM_VERSION}' "
            f"'torch=={_torch.__version__.split('+')[0]}')"
        ) from e
    return timm


class TimmBackbone(Backbone):
    """A timm ``features_only`` model as a Detectron2 Backbone.

    ``forward`` maps images (N, C, H, W) to ``{"res{k}": (N, C_k, H / 2**k, W / 2**k)}`` for each
    feature map timm reports at a power-of-two stride 2**k (for a model with several maps at one
    stride, the deepest). Channels-last outputs (timm's NHWC models, e.g. Swin) are returned as
    NCHW views. Parameter names are ``model.*``, the features model's own.
    """

    def __init__(self, model: torch.nn.Module, name: str = "timm model"):
        """
        Args:
            model: a timm model created with ``features_only=True`` (it has ``feature_info``).
            name: what error messages call it (the timm name).

        Raises ValueError naming MODEL.TIMM.NAME when the model has fewer than two maps whose
        strides are powers of two doubling from one to the next (a plain ViT: every map at 16).
        """
        super().__init__()
        info = model.feature_info
        reductions, channels = list(info.reduction()), list(info.channels())
        by_level: Dict[int, int] = {}  # level -> index into the model's outputs (deepest wins)
        for i, r in enumerate(reductions):
            if r >= 2 and 2 ** level_of(r) == r:
                by_level[level_of(r)] = i
        levels = sorted(by_level)
        chain = [k for k in levels if k - 1 in by_level or k + 1 in by_level]
        if len(chain) < 2:
            raise ValueError(
                f"MODEL.TIMM.NAME={name!r} has feature maps at strides {reductions}: no hierarchy of "
                "strides doubling from one map to the next (4, 8, 16, 32), which a pyramid is built on; "
                "use a hierarchical model (a CNN, ConvNeXt, Swin, ...), not a plain ViT"
            )
        self.model = model
        self.channels_last_outputs: bool = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
        self.indices: List[int] = [by_level[k] for k in levels]
        self.names: List[str] = [f"res{k}" for k in levels]
        self._out_features = list(self.names)
        self._out_feature_strides = {f"res{k}": 2 ** k for k in levels}
        self._out_feature_channels = {f"res{k}": channels[by_level[k]] for k in levels}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.model(x)
        out: Dict[str, torch.Tensor] = {}
        for name, i in zip(self.names, self.indices):
            m = maps[i]
            out[name] = m.permute(0, 3, 1, 2) if self.channels_last_outputs else m
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {k: ShapeSpec(channels=self._out_feature_channels[k], stride=s) for k, s in self._out_feature_strides.items()}


def create_timm_features(name: str, in_chans: int = 3, weights: str = ""):
    """``timm.create_model(name, features_only=True)``, random init or the local ``weights``.
    Raises ImportError with the install command when timm is missing, and ValueError naming
    MODEL.TIMM.NAME (with close matches) or MODEL.TIMM.WEIGHTS when those are bad."""
    timm = _import_timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6) if name else []
        hint = f"; close matches: {close}" if close else "; timm.list_models() lists them"
        raise ValueError(f"MODEL.TIMM.NAME={name!r} is not a timm model{hint}")
    kwargs = {"features_only": True, "in_chans": in_chans}
    if weights:
        if not os.path.isfile(weights):
            raise ValueError(f"MODEL.TIMM.WEIGHTS={weights!r}: no such file")
        # timm's own loader maps an original checkpoint's names onto the model and drops its
        # classifier, before the features wrapper renames modules; nothing is downloaded.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": os.path.abspath(weights)})
    try:
        return timm.create_model(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - a damaged or misfitting file fails in many ways
        if weights:
            raise ValueError(f"MODEL.TIMM.WEIGHTS={weights!r} cannot be loaded into timm model {name!r}: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
        if isinstance(e, RuntimeError) or "features_only" in str(e):
            raise ValueError(f"MODEL.TIMM.NAME={name!r} cannot be built with features_only=True: {e}") from e
        raise


def freeze_up_to(backbone: TimmBackbone, level: int) -> int:
    """Freeze (``requires_grad = False``) every parameter computed before the stride-2**level map
    (that map's module included), in the model's parameter order, which is its layer order.
    Returns the number of parameters frozen. ``level`` <= 0 freezes nothing."""
    if level <= 0:
        return 0
    model = backbone.model
    info = model.feature_info
    targets = [i for i, r in enumerate(info.reduction()) if r <= 2 ** level]
    if not targets:
        return 0
    module_name = info.module_name()[targets[-1]]
    module = _find_module(model, module_name)
    last = {id(p) for p in module.parameters()}
    if not last:
        return 0
    frozen = 0
    remaining = len(last)
    for p in model.parameters():
        p.requires_grad_(False)
        frozen += 1
        if id(p) in last:
            remaining -= 1
            if remaining == 0:
                break
    return frozen


def _find_module(model, dotted: str):
    """The submodule timm's feature_info names (``stages.1``), in a features model that may have
    flattened the first dot into its child's name (``stages_1``)."""
    for candidate in (dotted, dotted.replace(".", "_", 1), dotted.replace(".", "_")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise ValueError(f"MODEL.TIMM.FREEZE_AT: cannot find module {dotted!r} of the timm model to freeze up to")


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """The timm model MODEL.TIMM.NAME as a bottom-up: its maps named ``res{k}`` for stride 2**k,
    weights from MODEL.TIMM.WEIGHTS (a local file) or random, layers frozen up to
    MODEL.TIMM.FREEZE_AT, batch norms as MODEL.TIMM.NORM says. Bad values raise one error
    naming the key; nothing half-built is returned."""
    t = cfg.MODEL.TIMM
    check_choice(t.NORM, TIMM_NORMS, "MODEL.TIMM.NORM")
    freeze_at = t.FREEZE_AT
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or freeze_at < 0:
        raise ValueError(f"MODEL.TIMM.FREEZE_AT={freeze_at!r} must be an integer >= 0")
    model = create_timm_features(t.NAME, input_shape.channels, t.WEIGHTS)
    backbone = TimmBackbone(model, t.NAME)
    if t.NORM:
        timm = _import_timm()
        if t.NORM == "FrozenBN":
            backbone.model = timm.layers.freeze_batch_norm_2d(backbone.model)
        else:
            backbone.model = timm.layers.convert_sync_batchnorm(backbone.model)
    frozen = freeze_up_to(backbone, freeze_at)
    logger.info("timm bottom-up %s: %s, %d parameter tensors frozen", t.NAME,
                {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}, frozen)
    return backbone
