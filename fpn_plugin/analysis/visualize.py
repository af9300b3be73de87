"""Pictures of the pyramid: C2..C5 and P2..P6 at their true relative scale, the detections
coloured by the level their RoI was pooled from (Eq. 1), and a dataset's box sizes on the levels.
The pyramid picture works on the plugin's models and on Detectron2's own FPN detectors alike."""
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from detectron2.modeling.postprocessing import detector_postprocess

from ..engine.inference import pooler_levels

__all__ = ["LEVEL_COLOURS", "pyramid_forward", "render_pyramid", "pyramid_canvas_size", "plot_pyramid_fit"]

#: Colour of each pooled level in the pictures.
LEVEL_COLOURS = {2: (230, 25, 75), 3: (245, 130, 48), 4: (60, 180, 75), 5: (0, 130, 200), 6: (145, 30, 180)}
_GAP, _LABEL = 6, 14  # px between panels, px of label text above each panel


@torch.no_grad()
def pyramid_forward(predictor, image_bgr: np.ndarray):
    """Run ``predictor`` (Detectron2's ``DefaultPredictor``, e.g. from
    :func:`fpn_plugin.engine.inference.build_predictor`) on one (H, W, 3) uint8 BGR image, exactly as
    it runs at test time, and keep the maps its backbone computed on the way. The backbone may be
    any FPN with a bottom-up network at ``backbone.bottom_up``: the plugin's necks or
    Detectron2's ``FPN`` (stock ``faster_rcnn_R_50_FPN_*`` / ``mask_rcnn_R_50_FPN_*`` models).

    Returns (bottom-up maps by name, pyramid maps by name, Instances in image pixels on the CPU).
    Maps are (1, C, H/s, W/s) at the test-time input scale, on the CPU. The Instances carry
    ``pred_levels``, the level of the proposal each box was regressed from: set by the plugin's
    ROI heads (Eq. 1 with its settings); for Detectron2's own heads, found by Detectron2's rule
    (``assign_boxes_to_levels``) from the proposals and box predictions the forward made.
    """
    model = predictor.model
    bottom_up = getattr(model.backbone, "bottom_up", None)
    if not isinstance(bottom_up, torch.nn.Module):
        raise TypeError(
            f"the backbone must be an FPN with a bottom-up network (backbone.bottom_up), "
            f"got {type(model.backbone).__name__}"
        )
    seen = {}

    def keep(name, index=None):
        def hook(module, inputs, out):  # records the first output, returns nothing: output unchanged
            seen.setdefault(name, out if index is None else out[index])
        return hook

    watched = [(bottom_up, "bottom_up", None), (model.backbone, "pyramid", None),
               (getattr(model, "proposal_generator", None), "proposals", 0),
               (getattr(getattr(model, "roi_heads", None), "box_predictor", None), "predictions", None)]
    hooks = [m.register_forward_hook(keep(name, index)) for m, name, index in watched if m is not None]
    try:
        instances = predictor(image_bgr)["instances"]
    finally:
        for hook in hooks:
            hook.remove()
    if not instances.has("pred_levels") and {"proposals", "predictions"} <= set(seen):
        instances = _with_stock_levels(model, seen, image_bgr.shape[:2])
    instances = instances.to("cpu")
    in_features = getattr(model.backbone, "in_features", None) or list(seen["bottom_up"])
    bu = {k: v.cpu() for k, v in seen["bottom_up"].items() if k in in_features}
    pyramid = {k: v.cpu() for k, v in seen["pyramid"].items()}
    return bu, pyramid, instances


def _with_stock_levels(model, seen, image_hw):
    """The detections of a Detectron2 model whose heads do not set ``pred_levels``, rebuilt from
    the proposals and box predictions its forward made by the same ``inference`` and
    post-processing, with each detection's level by the model's own pooler rule."""
    heads = model.roi_heads
    results, kept = heads.box_predictor.inference(seen["predictions"], seen["proposals"])
    result = results[0]
    result.pred_levels = pooler_levels(heads.box_pooler, [seen["proposals"][0].proposal_boxes])[kept[0]]
    return detector_postprocess(result, *image_hw)


def _summary(fmap: torch.Tensor) -> np.ndarray:
    """(1, C, h, w) -> (h, w, 3) uint8: the L2 norm over channels, min-max scaled, coloured."""
    import matplotlib

    norm = fmap[0].float().norm(dim=0)
    norm = (norm - norm.min()) / (norm.max() - norm.min()).clamp(min=1e-12)
    lut = (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[(norm.numpy() * 255).astype(np.uint8)]


def pyramid_canvas_size(image_hw: Tuple[int, int], rows: List[List[Tuple[int, int]]], zoom: int) -> Tuple[int, int]:
    """(width, height) of the picture: the image on top, then one row of panels per list of map
    sizes (h, w), each panel ``zoom`` px per feature cell so relative scales stay true."""
    widths = [image_hw[1]] + [sum(w * zoom for _, w in r) + _GAP * (len(r) - 1) for r in rows]
    heights = [image_hw[0]] + [max(h for h, _ in r) * zoom for r in rows]
    return max(widths) + 2 * _GAP, sum(heights) + len(heights) * (_LABEL + _GAP) + _GAP


def render_pyramid(image_rgb: np.ndarray, bottom_up: Dict[str, torch.Tensor], pyramid: Dict[str, torch.Tensor],
                   instances=None, levels=None, zoom: int = 2) -> Image.Image:
    """The picture: the image with detections (box colour = pooled level), then C2..C5, then
    P2..P6, each map as its channel summary at ``zoom`` px per cell."""
    rows = [list(bottom_up.items()), list(pyramid.items())]
    size = pyramid_canvas_size(image_rgb.shape[:2], [[tuple(m.shape[-2:]) for _, m in r] for r in rows], zoom)
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = _GAP
    draw.text((_GAP, y), "detections, by the level their RoI was pooled from:", fill=(0, 0, 0))
    for i, k in enumerate(k for k in LEVEL_COLOURS if k < 6):
        draw.text((_GAP + 290 + 28 * i, y), f"P{k}", fill=LEVEL_COLOURS[k])
    y += _LABEL
    canvas.paste(Image.fromarray(image_rgb), (_GAP, y))
    if instances is not None and len(instances):
        for box, level in zip(instances.pred_boxes.tensor.tolist(), (levels.tolist() if levels is not None else [None] * len(instances))):
            x0, y0, x1, y1 = box
            draw.rectangle([x0 + _GAP, y0 + y, x1 + _GAP, y1 + y], outline=LEVEL_COLOURS.get(level, (0, 0, 0)), width=2)
    y += image_rgb.shape[0] + _GAP
    for row in rows:
        x = _GAP
        y += _LABEL
        for name, fmap in row:
            panel = Image.fromarray(_summary(fmap)).resize((fmap.shape[-1] * zoom, fmap.shape[-2] * zoom), Image.NEAREST)
            label = ("C" + name[3:]) if name.startswith("res") else name.upper()
            draw.text((x, y - _LABEL + 2), label, fill=(0, 0, 0))
            canvas.paste(panel, (x, y))
            x += panel.width + _GAP
        y += max(m.shape[-2] for _, m in row) * zoom + _GAP
    return canvas


def plot_pyramid_fit(fit: dict, path: str, title: str = ""):
    """The level report as one PNG (``fit`` from :func:`fpn_plugin.analysis.pyramid_fit.fit_pyramid`):
    for the config now and for the suggestion, the boxes' sizes on a log axis coloured by the level
    Eq. 1 pools them from, with Eq. 1's bin edges (dashed) and the anchor sides (dotted); below, the
    share of boxes with an anchor at IoU >= 0.5 and >= 0.7 per COCO size class, now and suggested."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, rule = fit["boxes"].sizes, fit["rule"]
    low, high = max(float(sizes.min()) / 1.5, 1.0), float(sizes.max()) * 1.5
    bins = np.geomspace(low, high, 41)
    shift = 0.5 if rule["rounding"] == "round" else 0.0
    levels = list(range(rule["min_level"], rule["max_level"] + 1))
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), gridspec_kw={"height_ratios": [1, 1, 0.9]})
    for ax, name in zip(axes[:2], ("now", "suggested")):
        setting = fit[name]
        c = setting["canonical_size"]
        edges = [c * 2.0 ** (k - rule["canonical_level"] - shift) for k in levels[1:]]
        bounds = [0.0] + edges + [np.inf]
        for i, k in enumerate(levels):
            sel = sizes[(sizes >= bounds[i]) & (sizes < bounds[i + 1])]
            ax.hist(sel, bins=bins, color=np.array(LEVEL_COLOURS[k]) / 255, label=f"P{k}: {len(sel)} boxes")
        for e in edges:
            ax.axvline(e, color="k", linestyle="--", linewidth=1)
        for j, side in enumerate(setting["anchor_sizes"]):
            if low <= side <= high:
                ax.axvline(side, color="0.35", linestyle=":", linewidth=1.6, label="anchor sides" if j == 0 else None)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ticks = [2.0 ** j for j in range(int(math.floor(math.log2(low))), int(math.ceil(math.log2(high))) + 1)]
        ax.set_xticks([t for t in ticks if low <= t <= high])
        ax.set_xticklabels([f"{t:g}" for t in ticks if low <= t <= high])
        anchors = ", ".join(f"{a:g}" for a in setting["anchor_sizes"])
        ax.set_title(f"{name}: canonical size {c} (k0 = {rule['canonical_level']}, {rule['rounding']}), anchors {anchors} px",
                     fontsize=10)
        ax.set_ylabel("boxes")
        ax.legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("box size sqrt(wh) at the model's input scale (px, log axis); dashed: Eq. 1's level edges")
    ax = axes[2]
    classes = list(fit["now"]["coverage"])
    x = np.arange(len(classes))
    bars = [("now, IoU >= 0.5", "now", 0, "#9ecae1"), ("now, IoU >= 0.7", "now", 1, "#3182bd"),
            ("suggested, IoU >= 0.5", "suggested", 0, "#fdae6b"), ("suggested, IoU >= 0.7", "suggested", 1, "#e6550d")]
    for j, (label, name, t, colour) in enumerate(bars):
        values = [100 * fit[name]["coverage"][c][1][t] for c in classes]
        ax.bar(x + (j - 1.5) * 0.2, values, 0.2, label=label, color=colour)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c} ({fit['now']['coverage'][c][0]})" for c in classes])
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of boxes with an anchor at IoU")
    ax.set_title("anchor coverage per COCO size class (0.7 is the RPN's positive threshold)", fontsize=10)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
