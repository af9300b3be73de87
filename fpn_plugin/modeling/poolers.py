"""The paper's RoI-to-level rule (Eq. 1) and a multi-level RoI pooler that uses it."""
from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

__all__ = ["LEVEL_ROUNDINGS", "roi_levels", "LevelROIPooler"]

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


class LevelROIPooler(ROIPooler):
    """Detectron2's ROIPooler with the level rule of :func:`roi_levels` (its rounding a choice).

    Takes features ``x[i]`` of shape (N, C, H_i, W_i) at strides 2**(min_level + i) and one
    :class:`Boxes` per image; returns (R, C, output_size, output_size) for the R RoIs of the
    batch, in the order of the concatenated box lists.
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
        super().__init__(
            output_size, scales, sampling_ratio, pooler_type, canonical_box_size, canonical_level
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
        if len(x) != len(self.level_poolers):
            raise ValueError("expected one feature map per pooled level")
        rois = convert_boxes_to_pooler_format(box_lists)  # (R, 5): batch index, x0, y0, x1, y1
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], rois)
        level_idx = self.levels(box_lists) - self.min_level
        out = x[0].new_zeros((rois.shape[0], x[0].shape[1], self.output_size[0], self.output_size[1]))
        for i, pooler in enumerate(self.level_poolers):
            inds = torch.nonzero(level_idx == i).squeeze(1)
            out.index_put_((inds,), pooler(x[i], rois[inds]).to(out.dtype))
        return out
