"""The paper's RoI-to-level rule (Eq. 1) and a multi-level RoI pooler that uses it."""
import math
from typing import List

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from detectron2.utils.tracing import assert_fx_safe, is_fx_tracing

from ..config import check_choice

__all__ = ["LEVEL_ROUNDINGS", "roi_levels", "indices_by_level", "LevelROIPooler"]

#: How Eq. 1's real-valued level is made an integer: "floor" is the paper's rule; "round" is
#: round-to-nearest, which Keras Mask R-CNN's normalised-coordinate formula reduces to.
LEVEL_ROUNDINGS = ("floor", "round")


def roi_levels(
    boxes: torch.Tensor,
    canonical_level: int = 4,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 5,
    rounding: str = "floor",
) -> torch.Tensor:
    """Pyramid level of each RoI by Eq. 1: k = floor(k0 + log2(sqrt(w*h) / 224)), clamped.

    Args:
        boxes: (R, 4) boxes as (x0, y0, x1, y1) in input-image pixels.
        canonical_level: k0, the level of an RoI of ``canonical_size``.
        canonical_size: the canonical sqrt(w*h) in pixels (224).
        min_level, max_level: the pooled levels (2 and 5 for P2..P5); results are clamped to them.
        rounding: "floor" (bin edges at canonical_size * 2**j: 112, 224, 448 px for k0 = 4)
            or "round" (edges at canonical_size * 2**(j + 1/2): 158.4, 316.8 px).
    Returns:
        (R,) int64 absolute levels in [min_level, max_level].
    """
    if rounding != "floor" and rounding != "round":  # spelled out for TorchScript
        raise ValueError("rounding='" + rounding + "' is not one of ['floor', 'round']")
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    sizes = torch.sqrt(wh[:, 0] * wh[:, 1])
    # + 1e-6 keeps boxes exactly on a bin edge (112, 224, 448 px for k0 = 4) from falling a
    # level lower through float error in sqrt/log2.
    k = canonical_level + torch.log2(sizes / canonical_size) + 1e-6
    if rounding == "round":
        k = k + 0.5
    # Zero-area boxes give -inf: clamping sends them to the finest level.
    k = torch.floor(torch.nan_to_num(k, neginf=float(min_level)))
    return k.clamp(min=min_level, max=max_level).to(torch.int64)


def indices_by_level(level_idx: torch.Tensor, num_levels: int) -> List[torch.Tensor]:
    """The RoIs of each level: for ``level_idx`` (R,) int64 in [0, num_levels), a list of
    ``num_levels`` int64 index tensors, level i's RoIs in ascending order.

    One stable sort and one count of every level, read once: a single host synchronisation on a
    GPU where a ``nonzero`` per level (Detectron2's ROIPooler) costs one per level. When traced
    (TorchScript tracing, ONNX), the counts would become constants of the graph, so there the
    indices come from one ``nonzero`` per level, as in Detectron2: the same indices, in the same order.
    """
    if torch.jit.is_tracing():
        return [nonzero_tuple(level_idx == i)[0] for i in range(num_levels)]
    order = torch.sort(level_idx, stable=True)[1]
    counts: List[int] = torch.bincount(level_idx, minlength=num_levels).tolist()
    return list(torch.split(order, counts))


class LevelROIPooler(ROIPooler):
    """Detectron2's ROIPooler with the level rule of :func:`roi_levels` (its rounding a choice).

    Takes features ``x[i]`` of shape (N, C, H_i, W_i) at strides 2**(min_level + i) and one
    :class:`Boxes` per image; returns (R, C, output_size, output_size) for the R RoIs of the
    batch, in the order of the concatenated box lists. The same checks, empty-input result and
    tracing and scripting support as Detectron2's ROIPooler; the RoIs are grouped by level with
    :func:`indices_by_level` instead of one ``nonzero`` per level. Each RoI is pooled by the same
    op on the same map as in Detectron2's per-level loop, so the output is the same to the bit.
    """

    def __init__(
        self,
        output_size,
        scales,
        sampling_ratio,
        pooler_type,
        canonical_box_size=224,
        canonical_level=4,
        level_rounding="floor",
    ):
        """Detectron2's ROIPooler arguments, and ``level_rounding`` of :func:`roi_levels`. Raises
        ValueError naming the argument and its MODEL.FPN_PAPER key for a canonical level outside
        the pooled levels, a canonical size that is not a positive number, or an unknown rounding."""
        check_choice(level_rounding, LEVEL_ROUNDINGS, "MODEL.FPN_PAPER.LEVEL_ROUNDING", "level_rounding")
        size = canonical_box_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not _positive_finite(size):
            raise ValueError(
                f"MODEL.FPN_PAPER.CANONICAL_SIZE (canonical_box_size)={size!r} must be a positive number of pixels"
            )
        super().__init__(
            output_size, scales, sampling_ratio, pooler_type, canonical_box_size, canonical_level
        )
        k0, lo, hi = canonical_level, self.min_level, self.max_level
        # With a single pooled level (a single-scale ablation) Eq. 1 has nothing to choose.
        if isinstance(k0, bool) or not isinstance(k0, int) or (lo < hi and not lo <= k0 <= hi):
            raise ValueError(
                f"MODEL.FPN_PAPER.CANONICAL_LEVEL (canonical_level)={k0!r} must be an integer within "
                f"the pooled levels {lo}..{hi}"
            )
        self.level_rounding = level_rounding

    def levels(self, box_lists: List[Boxes]) -> torch.Tensor:
        """(R,) absolute pyramid level each RoI is pooled from."""
        if len(box_lists) == 0:
            boxes = torch.zeros(0, 4)
        else:
            boxes = torch.cat([b.tensor for b in box_lists])
        return roi_levels(
            boxes, self.canonical_level, float(self.canonical_box_size),
            self.min_level, self.max_level, self.level_rounding,
        )

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        num_levels = len(self.level_poolers)
        # Detectron2's ROIPooler checks, word for word, so a misuse fails the same way.
        if not is_fx_tracing():
            torch._assert(isinstance(x, list) and isinstance(box_lists, list), "Arguments to pooler must be lists")
        assert_fx_safe(
            len(x) == num_levels,
            "unequal value, num_level_assignments={}, but x is list of {} Tensors".format(num_levels, len(x)),
        )
        assert_fx_safe(
            len(box_lists) == x[0].size(0),
            "unequal value, x[0] batch dim 0 is {}, but box_list has length {}".format(x[0].size(0), len(box_lists)),
        )
        channels, (out_h, out_w) = x[0].shape[1], self.output_size
        if len(box_lists) == 0:
            return torch.zeros((0, channels, out_h, out_w), dtype=x[0].dtype, device=x[0].device)
        rois = convert_boxes_to_pooler_format(box_lists)  # (R, 5): batch index, x0, y0, x1, y1
        if num_levels == 1:
            return self.level_poolers[0](x[0], rois)
        groups = indices_by_level(self.levels(box_lists) - self.min_level, num_levels)
        out = torch.zeros((rois.shape[0], channels, out_h, out_w), dtype=x[0].dtype, device=x[0].device)
        for i, pooler in enumerate(self.level_poolers):
            inds = groups[i]
            # index_put_ rather than advanced-index assignment, as Detectron2 (pytorch#49852)
            out.index_put_((inds,), pooler(x[i], rois[inds]).to(out.dtype))
        return out


def _positive_finite(x) -> bool:
    """0 < x < inf (NaN, inf and ints too large for a float are not sizes)."""
    try:
        return 0 < float(x) < math.inf
    except OverflowError:
        return False
