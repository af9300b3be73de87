"""The embedded dataset: deterministic, multi-scale synthetic shapes in COCO json form.

Five categories of filled polygons (circle as a 64-gon, rectangle, triangle, star, cross) whose
size, the square root of the shape's area (what COCO's size classes measure), lies in
``object_size`` (8..200 px by default): each shape falls in COCO's small (area < 32^2), medium or
large (area >= 96^2) class with equal chance and is log-uniform within it, so each class makes
a good share of the objects (large ones the least: they most often find no room). Backgrounds are textured
(low-frequency colour noise, grain and random line clutter); boxes overlap freely, while the
shapes themselves never share a pixel, so every polygon annotation is the exact mask of what was
drawn. The same spec always gives the same images (numpy's PCG64, seeded per image).

Writing a split to disk is :mod:`fpn_plugin.data.generation`'s.
"""
import math
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CATEGORIES", "ShapesSpec", "SPLITS", "shape_polygon", "draw_image"]

CATEGORIES = ("circle", "rectangle", "triangle", "star", "cross")


@dataclass(frozen=True)
class ShapesSpec:
    """What one split holds; two equal specs give byte-identical annotations."""

    num_images: int
    image_size: Tuple[int, int] = (360, 480)  # each side uniform in [min, max] px
    object_size: Tuple[float, float] = (8.0, 200.0)  # sqrt of a shape's area in px (see _draw_sizes)
    max_objects: int = 12
    empty_fraction: float = 0.04  # images with no object at all (pure background)
    seed: int = 0


#: The registered splits. The main job trains on ``fpn_shapes_train_dense`` and evaluates on
#: ``fpn_shapes_val``; the ablation project trains on ``fpn_shapes_train``, drawn as the
#: validation split is. The dense split draws up to 36 objects per image instead of 12, from
#: the same size law (12.3 per image on average against 5.5; large shapes find room least
#: often): a 256 px training crop holds 2.2 times the objects for the same arithmetic, and the
#: box head, what a short schedule runs out of time on, sees that much more foreground. The
#: ``tiny`` splits are for tests and quick checks.
SPLITS: Dict[str, ShapesSpec] = {
    "fpn_shapes_train": ShapesSpec(num_images=1000, seed=1),
    "fpn_shapes_train_dense": ShapesSpec(num_images=1000, max_objects=36, seed=1),
    "fpn_shapes_val": ShapesSpec(num_images=100, seed=2),
    "fpn_shapes_tiny_train": ShapesSpec(
        num_images=8, image_size=(64, 100), object_size=(8, 60), max_objects=4, seed=3
    ),
    "fpn_shapes_tiny_val": ShapesSpec(
        num_images=4, image_size=(64, 100), object_size=(8, 60), max_objects=4, seed=4
    ),
}


def shape_polygon(category: str, cx: float, cy: float, size: float, angle: float, aspect: float):
    """Vertices (K, 2) of a shape centred at (cx, cy), and its closed-form area.

    ``size`` is the nominal extent in px (diameter, side, or tip-to-tip), ``angle`` a rotation
    in radians and ``aspect`` (0.5..1) the rectangle's height/width ratio.
    """
    r = size / 2.0
    if category == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts, area = np.stack([np.cos(t), np.sin(t)], 1) * r, math.pi * r * r
    elif category == "rectangle":
        w, h = size, size * aspect
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2.0
        area = w * h
    elif category == "triangle":  # isosceles: base = height = size
        pts = np.array([[0.0, -r], [r, r], [-r, r]])
        area = size * size / 2.0
    elif category == "star":  # five points, inner radius 0.45 of the outer
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * rad[:, None]
        area = 5 * r * (0.45 * r) * math.sin(math.pi / 5)
    elif category == "cross":  # a plus sign, arms a third of the extent wide
        a = size / 6.0
        pts = np.array([
            [-a, -r], [a, -r], [a, -a], [r, -a], [r, a], [a, a],
            [a, r], [-a, r], [-a, a], [-r, a], [-r, -a], [-a, -a],
        ])
        area = 2 * size * (2 * a) - (2 * a) ** 2
    else:
        raise ValueError(f"unknown shape category {category!r}; one of {CATEGORIES}")
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy]), area


def _background(rng, h, w) -> Image.Image:
    """Textured clutter: smooth colour noise, fine grain and random lines."""
    coarse = rng.uniform(0, 255, size=(rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img = img * rng.uniform(0.4, 0.9) + rng.normal(0, rng.uniform(4, 14), size=(h, w, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 13))):
        xy = rng.uniform(0, 1, 4) * [w, h, w, h]
        draw.line(list(map(float, xy)), fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 4)))
    return pil


def _contrasting_colour(rng, image: Image.Image, pts: np.ndarray):
    """A random colour at L1 distance >= 120 from the mean background under the shape's box,
    so every annotated object is visible (small ones stay hard through their size alone)."""
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    mean = np.asarray(image.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))), np.float32).reshape(-1, 3).mean(0)
    colour = rng.integers(0, 256, 3)
    for _ in range(20):
        if np.abs(colour - mean).sum() >= 120:
            break
        colour = rng.integers(0, 256, 3)
    return tuple(int(c) for c in colour)


#: COCO's size classes split sqrt(area) at these px: small < 32 <= medium < 96 <= large.
COCO_SIZE_EDGES = (32.0, 96.0)


def _draw_sizes(rng, object_size: Tuple[float, float], n: int) -> np.ndarray:
    """``n`` sizes (sqrt of area, px): a COCO size class among those ``object_size`` spans, each
    equally likely, then a size log-uniform within the class. Large shapes are the ones that
    most often find no room, so an even draw over the classes keeps each class well represented."""
    lo, hi = object_size
    edges = [lo] + [e for e in COCO_SIZE_EDGES if lo < e < hi] + [hi]
    k = rng.integers(len(edges) - 1, size=n)
    u = rng.uniform(size=n)
    a, b = np.log(np.take(edges, k)), np.log(np.take(edges, k + 1))
    return np.exp(a + u * (b - a))


def draw_image(spec: ShapesSpec, index: int):
    """One image and its annotations (COCO dicts without ids)."""
    rng = np.random.default_rng([spec.seed, index])
    w, h = (int(rng.integers(spec.image_size[0], spec.image_size[1] + 1)) for _ in range(2))
    image = _background(rng, h, w)
    draw = ImageDraw.Draw(image)
    occupied = Image.new("L", (w, h), 0)  # pixels already covered by a shape (dilated by 1)
    n = 0 if rng.uniform() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
    sizes = sorted(_draw_sizes(rng, spec.object_size, n), reverse=True)  # big first: they need room
    annos = []
    for size in sizes:
        cat = int(rng.integers(len(CATEGORIES)))
        angle, aspect = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)
        # The extent whose area is size^2 (a star covers a third of its extent squared, a circle
        # 0.785), no larger than the image allows.
        unit_area = shape_polygon(CATEGORIES[cat], 0.0, 0.0, 1.0, 0.0, aspect)[1]
        extent = min(size / math.sqrt(unit_area), min(w, h) - 4)
        shape, area = shape_polygon(CATEGORIES[cat], 0.0, 0.0, extent, angle, aspect)  # centred on 0
        lo, hi = shape.min(0), shape.max(0)
        for _ in range(60):  # tries to find free room; else the shape is not drawn
            # A centre where the whole shape fits in the image.
            cx = rng.uniform(-lo[0], max(w - hi[0], -lo[0]))
            cy = rng.uniform(-lo[1], max(h - hi[1], -lo[1]))
            pts = shape + np.array([cx, cy])
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                continue
            # The shape's mask on a window of its box (with room for the dilation) rather than the
            # whole image: the same pixels, tested and marked at a fraction of the cost (dense
            # splits try hundreds of placements per image).
            left, top = max(int(x0) - 2, 0), max(int(y0) - 2, 0)
            right, bottom = min(math.ceil(x1) + 3, w), min(math.ceil(y1) + 3, h)
            mask = Image.new("L", (right - left, bottom - top), 0)
            ImageDraw.Draw(mask).polygon([tuple(p) for p in pts - (left, top)], fill=255)
            if np.any(np.asarray(occupied.crop((left, top, right, bottom)))[np.asarray(mask) > 0]):
                continue
            occupied.paste(255, (left, top, right, bottom), mask=mask.filter(ImageFilter.MaxFilter(3)))
            draw.polygon([tuple(p) for p in pts], fill=_contrasting_colour(rng, image, pts))
            annos.append({
                "category_id": cat + 1,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],  # XYWH, absolute
                "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]],
                "area": float(area),
                "iscrowd": 0,
            })
            break
    return image, annos
