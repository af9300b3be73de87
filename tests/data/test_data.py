"""The embedded dataset: determinism, the size mix, exact masks, safe generation, bad files."""
import dataclasses
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from fpn_plugin.data import (
    CATEGORIES, SPLITS, DatasetFileError, ShapesSpec, check_has_masks, generate_shapes,
    sanitize_annotations,
)
from fpn_plugin.data import generation, shapes as shapes_mod
from fpn_plugin.data.datasets import load_json_checked
from fpn_plugin.data.mapper import CheckedDatasetMapper
from fpn_plugin.data.shapes import shape_polygon

SMALL = ShapesSpec(num_images=6, image_size=(80, 120), object_size=(8, 70), max_objects=5, seed=7)


def read(path):
    with open(path) as f:
        return json.load(f)


def test_same_spec_same_dataset(tmp_path):
    a = read(generate_shapes(SMALL, str(tmp_path / "a")))
    b = read(generate_shapes(SMALL, str(tmp_path / "b")))
    assert a == b
    for im in a["images"]:
        pa, pb = (np.asarray(Image.open(tmp_path / d / "images" / im["file_name"])) for d in "ab")
        assert np.array_equal(pa, pb)
    assert [c["name"] for c in a["categories"]] == list(CATEGORIES)


def test_default_split_has_small_medium_and_large(tmp_path):
    spec = ShapesSpec(num_images=40, seed=SPLITS["fpn_shapes_train"].seed)
    coco = read(generate_shapes(spec, str(tmp_path / "s")))
    areas = np.array([a["area"] for a in coco["annotations"]])
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    medium = 1 - small - large
    assert min(small, medium, large) > 0.2, (small, medium, large)  # each COCO class >= 20%
    sides = np.sqrt(areas)  # sqrt(area) is drawn within 8..200 px; the smallest are genuinely small
    assert 8 - 1e-6 <= sides.min() < 10 and 150 < sides.max() <= 200 + 1e-6


def test_dense_split_has_more_objects_of_the_same_law(tmp_path):
    """The main job's training split: more shapes per image than the validation law gives, the
    same size classes, and still no two shapes sharing a pixel."""
    dense, sparse = SPLITS["fpn_shapes_train_dense"], SPLITS["fpn_shapes_train"]
    assert (dense.max_objects, sparse.max_objects) == (36, 12)
    assert dense.object_size == sparse.object_size == SPLITS["fpn_shapes_val"].object_size
    coco = {name: read(generate_shapes(dataclasses.replace(spec, num_images=24), str(tmp_path / name)))
            for name, spec in (("dense", dense), ("sparse", sparse))}
    assert len(coco["dense"]["annotations"]) > 1.4 * len(coco["sparse"]["annotations"])
    areas = np.array([a["area"] for a in coco["dense"]["annotations"]])
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    assert min(small, 1 - small - large, large) > 0.15  # every COCO size class keeps its share
    for im in coco["dense"]["images"]:  # no overlap: each polygon stays its shape's exact mask
        rles = [mask_util.frPyObjects(a["segmentation"], im["height"], im["width"])[0]
                for a in coco["dense"]["annotations"] if a["image_id"] == im["id"]]
        if rles:
            assert mask_util.decode(rles).astype(int).sum(-1).max() == 1, im["file_name"]


def test_polygons_are_exact_masks(tmp_path):
    """Rasterised polygon area equals the shape's closed-form area up to boundary pixels."""
    coco = read(generate_shapes(SMALL, str(tmp_path / "m")))
    assert coco["annotations"]
    ims = {im["id"]: im for im in coco["images"]}
    for a in coco["annotations"]:
        im = ims[a["image_id"]]
        rle = mask_util.frPyObjects(a["segmentation"], im["height"], im["width"])
        pixels = float(mask_util.area(mask_util.merge(rle)))
        poly = np.array(a["segmentation"][0]).reshape(-1, 2)
        perimeter = np.linalg.norm(poly - np.roll(poly, 1, 0), axis=1).sum()
        assert abs(pixels - a["area"]) <= 0.5 * perimeter + 2, (a, pixels)
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]


@pytest.mark.parametrize("category, area", [
    ("rectangle", 40 * 30), ("triangle", 40 * 40 / 2), ("cross", 5 / 9 * 40 * 40),
    ("circle", np.pi * 20 * 20), ("star", 5 * 20 * 9 * np.sin(np.pi / 5)),
])
def test_closed_form_areas(category, area):
    pts, closed = shape_polygon(category, 50, 50, 40, 0.3, 0.75)
    assert closed == pytest.approx(area)
    x, y = pts[:, 0], pts[:, 1]
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert shoelace == pytest.approx(area, rel=0.005)  # the 64-gon is within 0.2% of the circle


def test_processes_draw_the_same_bytes(tmp_path, monkeypatch):
    spec, workers = dataclasses.replace(SMALL, num_images=16), generation._generation_workers
    assert workers(1000) >= 1 and workers(49) == 1  # small splits stay in one process
    monkeypatch.setattr(generation, "_generation_workers", lambda n: 1)
    one = generate_shapes(spec, str(tmp_path / "one"))
    monkeypatch.setattr(generation, "_generation_workers", lambda n: 3)
    three = generate_shapes(spec, str(tmp_path / "three"))
    assert open(one, "rb").read() == open(three, "rb").read()
    for name in sorted(os.listdir(tmp_path / "one" / "images")):
        assert (tmp_path / "one" / "images" / name).read_bytes() == (tmp_path / "three" / "images" / name).read_bytes()
    assert len(os.listdir(tmp_path / "three" / "images")) == 16


def test_interrupted_generation_is_never_trusted(tmp_path, monkeypatch):
    out = tmp_path / "split"
    real_draw = shapes_mod.draw_image

    def dies_at_3(spec, i):
        if i == 3:
            raise KeyboardInterrupt
        return real_draw(spec, i)

    monkeypatch.setattr(shapes_mod, "draw_image", dies_at_3)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(SMALL, str(out))
    assert not out.exists()
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".split.tmp-")]
    assert leftovers  # the partial folder is left under a temporary name only

    monkeypatch.setattr(shapes_mod, "draw_image", real_draw)
    coco = read(generate_shapes(SMALL, str(out)))
    assert len(coco["images"]) == SMALL.num_images
    assert len(os.listdir(out / "images")) == SMALL.num_images
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".split.tmp-")]
    assert coco == read(generate_shapes(SMALL, str(tmp_path / "clean")))


def test_missing_and_corrupt_annotation_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(DatasetFileError, match="nope.json"):
        load_json_checked(missing, str(tmp_path), "x")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetFileError, match="bad.json.*corrupt|corrupt.*bad.json"):
        load_json_checked(str(bad), str(tmp_path), "x")


@pytest.mark.parametrize("content", [None, b"not a jpeg at all"])
def test_missing_or_corrupt_image_names_the_file(make_cfg, tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    mapper = CheckedDatasetMapper(make_cfg(), is_train=True)
    with pytest.raises(DatasetFileError, match="broken.jpg"):
        mapper({"file_name": str(path), "height": 10, "width": 10, "image_id": 1, "annotations": []})


def test_sanitize_drops_degenerate_and_outside_boxes(caplog):
    from detectron2.structures import BoxMode

    def anno(b):
        return {"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}

    record = {"file_name": "x.jpg", "width": 100, "height": 80, "annotations": [
        anno([10, 10, 20, 20]),     # kept
        anno([10, 10, 0, 20]),      # zero width
        anno([150, 10, 20, 20]),    # right of the image
        anno([-30, -30, 20, 20]),   # above-left of the image
        anno([90, 70, 30, 30]),     # partly inside: kept (the mapper clips it)
    ]}
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.data.datasets"):
        out = sanitize_annotations([record])
    assert [a["bbox"] for a in out[0]["annotations"]] == [[10, 10, 20, 20], [90, 70, 30, 30]]
    assert len(record["annotations"]) == 5  # the input is not modified
    assert "Dropped 3 annotations" in caplog.text and "x.jpg" in caplog.text


def test_mask_on_without_masks_is_named():
    dicts = [{"annotations": [{"bbox": [0, 0, 5, 5]}]}]
    with pytest.raises(ValueError, match="MODEL.MASK_ON.*my_boxes_only"):
        check_has_masks(dicts, ["my_boxes_only"])
    check_has_masks([{"annotations": [{"bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5]]}]}], ["ok"])


def test_folder_without_json_is_regenerated(tmp_path):
    out = tmp_path / "split"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000000.jpg").write_bytes(b"half")
    coco = read(generate_shapes(SMALL, str(out)))
    assert len(coco["images"]) == len(os.listdir(out / "images")) == SMALL.num_images


def test_split_drawn_from_another_spec_is_drawn_again(tmp_path, monkeypatch, caplog):
    generate_shapes(dataclasses.replace(SMALL, max_objects=2), str(tmp_path / "s"))
    monkeypatch.setitem(shapes_mod.SPLITS, "s", SMALL)
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.data.generation"):
        coco = read(generation.ensure_shapes("s", str(tmp_path)))
    assert "max_objects=2" in caplog.text and "max_objects=5" in caplog.text
    assert coco == read(generate_shapes(SMALL, str(tmp_path / "fresh")))
    assert sorted(os.listdir(tmp_path)) == ["fresh", "s"]  # the old draw is gone, not set aside
    json_file = tmp_path / "s" / "annotations.json"
    before = os.stat(json_file).st_mtime_ns
    caplog.clear()
    generation.ensure_shapes("s", str(tmp_path))  # the same spec: used as it is
    assert os.stat(json_file).st_mtime_ns == before and not caplog.text


def test_corrupt_split_json_is_left_for_the_loader_to_name(tmp_path, monkeypatch):
    monkeypatch.setitem(shapes_mod.SPLITS, "s", SMALL)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "annotations.json").write_text('{"images": [')
    json_file = generation.ensure_shapes("s", str(tmp_path))
    assert open(json_file).read() == '{"images": ['
    with pytest.raises(DatasetFileError, match="corrupt: .*annotations.json"):
        load_json_checked(json_file, str(tmp_path / "s" / "images"), "s")


def test_mask_job_crops_polygons(make_cfg, tmp_path):
    """The mask job's training mapper (320 px crops of native images) crops polygon masks, which
    needs shapely (fvcore's CropTransform.apply_polygons): a 10x10 square stays 100 px^2 with
    its box, in an image smaller than the crop (cut whole, at offset 0); the square is centred
    horizontally, so the random flip leaves it in place."""
    from detectron2.structures import BoxMode

    Image.new("RGB", (60, 40), (90, 90, 90)).save(tmp_path / "im.png")
    cfg = make_cfg("fpn_paper_mask.yaml")
    assert cfg.INPUT.CROP.ENABLED and cfg.MODEL.MASK_ON
    square = [25.0, 5.0, 35.0, 5.0, 35.0, 15.0, 25.0, 15.0]
    anno = {"bbox": [25, 5, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "segmentation": [square]}
    out = CheckedDatasetMapper(cfg, is_train=True)(
        {"file_name": str(tmp_path / "im.png"), "height": 40, "width": 60, "image_id": 1, "annotations": [anno]}
    )
    inst = out["instances"]
    assert tuple(out["image"].shape) == (3, 40, 60)
    assert inst.gt_masks.area().tolist() == [100.0]
    assert inst.gt_boxes.tensor.tolist() == [[25.0, 5.0, 35.0, 15.0]]
    assert inst.gt_classes.tolist() == [2]


def test_mask_job_maps_an_image_without_objects(make_cfg, tmp_path):
    """Object-free images are negatives in the mask job too: mapped to empty Instances, not an
    error (Detectron2's mapper recomputes boxes from masks such an image does not have)."""
    Image.new("RGB", (60, 40), (90, 90, 90)).save(tmp_path / "im.png")
    mapper = CheckedDatasetMapper(make_cfg("fpn_paper_mask.yaml"), is_train=True)
    assert mapper.recompute_boxes
    out = mapper({"file_name": str(tmp_path / "im.png"), "height": 40, "width": 60, "image_id": 1, "annotations": []})
    assert len(out["instances"]) == 0
    assert mapper.recompute_boxes  # still on for the next image
