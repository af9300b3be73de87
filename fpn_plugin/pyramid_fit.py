"""How a dataset's ground-truth boxes fall on the pyramid under Eq. 1, before any training."""
import math
from typing import Dict, List

import numpy as np
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BoxMode

from .poolers import roi_levels

__all__ = ["gt_box_sizes", "level_counts", "format_level_table", "plot_level_histogram"]


def gt_box_sizes(dataset_dicts: List[Dict], min_size_test: int = 0, max_size_test: int = 0) -> np.ndarray:
    """sqrt(w*h) of every non-crowd ground-truth box, in the pixels the model sees: each image
    is resized as at test time (ResizeShortestEdge to ``min_size_test``, 0 = no resize)."""
    sizes = []
    for record in dataset_dicts:
        scale = 1.0
        if min_size_test:
            h, w = record["height"], record["width"]
            new_h, _ = ResizeShortestEdge.get_output_shape(h, w, min_size_test, max_size_test or 10 ** 9)
            scale = new_h / h
        for anno in record.get("annotations", []):
            if anno.get("iscrowd", 0):
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)
            sizes.append(math.sqrt(max(x1 - x0, 0) * max(y1 - y0, 0)) * scale)
    return np.asarray(sizes, dtype=np.float64)


def level_counts(sizes: np.ndarray, canonical_level=4, canonical_size=224, min_level=2, max_level=5,
                 rounding="floor") -> Dict[str, int]:
    """Boxes per level P{min_level}..P{max_level} by :func:`roi_levels`, plus how many of them
    Eq. 1 put below the finest / above the coarsest level before clamping."""
    boxes = torch.zeros(len(sizes), 4, dtype=torch.float64)
    boxes[:, 2] = boxes[:, 3] = torch.as_tensor(sizes)
    levels = roi_levels(boxes, canonical_level, canonical_size, min_level, max_level, rounding)
    raw = roi_levels(boxes, canonical_level, canonical_size, -100, 100, rounding)
    counts = {f"P{k}": int((levels == k).sum()) for k in range(min_level, max_level + 1)}
    counts["below P%d (clamped up)" % min_level] = int((raw < min_level).sum())
    counts["above P%d (clamped down)" % max_level] = int((raw > max_level).sum())
    return counts


def format_level_table(counts: Dict[str, int], title: str) -> str:
    total = sum(v for k, v in counts.items() if k.startswith("P") and " " not in k)
    lines = [title, "", "| level | boxes | share |", "|---|---|---|"]
    for k, v in counts.items():
        lines.append(f"| {k} | {v} | {100.0 * v / max(total, 1):.1f}% |")
    return "\n".join(lines)


def plot_level_histogram(sizes: np.ndarray, path: str, canonical_level=4, canonical_size=224,
                         min_level=2, max_level=5, rounding="floor", title=""):
    """A histogram of log2 box sizes, bars coloured by the level Eq. 1 gives, bin edges marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .visualize import LEVEL_COLOURS

    shift = 0.5 if rounding == "round" else 0.0
    edges = [canonical_size * 2.0 ** (k - canonical_level - shift) for k in range(min_level + 1, max_level + 1)]
    bins = np.linspace(np.log2(max(sizes.min(), 1.0)) if len(sizes) else 0, np.log2(sizes.max()) if len(sizes) else 10, 41)
    fig, ax = plt.subplots(figsize=(8, 4))
    log_sizes = np.log2(np.maximum(sizes, 1e-6))
    bounds = [-np.inf] + [math.log2(e) for e in edges] + [np.inf]
    for i, k in enumerate(range(min_level, max_level + 1)):
        sel = log_sizes[(log_sizes >= bounds[i]) & (log_sizes < bounds[i + 1])]
        ax.hist(sel, bins=bins, color=np.array(LEVEL_COLOURS[k]) / 255, label=f"P{k} ({len(sel)})")
    for e in edges:
        ax.axvline(math.log2(e), color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("log2 sqrt(wh) of ground-truth boxes at the model's input scale (px)")
    ax.set_ylabel("boxes")
    ax.set_title(title or f"Eq. 1 levels (k0={canonical_level}, canonical {canonical_size}, {rounding})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
