"""tools/level_report.py straight from a COCO json, its bad inputs, and the input-scale warning."""
import importlib.util
import json
import os

import numpy as np
import pytest

from helpers import ROOT, TINY


def level_report(argv):
    spec = importlib.util.spec_from_file_location("level_report", os.path.join(ROOT, "tools", "level_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def write_coco(path, boxes_per_image, size=(200, 300), **image_extra):
    images = [{"id": i + 1, "file_name": f"{i:03d}.jpg", "height": size[0], "width": size[1], **image_extra}
              for i in range(len(boxes_per_image))]
    boxes = [(i, b) for i, image_boxes in enumerate(boxes_per_image) for b in image_boxes]
    annotations = [{"id": j + 1, "image_id": i + 1, "bbox": list(b), "category_id": 1, "iscrowd": 0, "area": b[2] * b[3]}
                   for j, (i, b) in enumerate(boxes)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return str(path)


BOXES = [[(10, 10, 20, 30), (50, 40, 80, 60)], [(5, 5, 150, 120)], [(100, 20, 9, 9), (30, 30, 40, 40)]]


def test_json_report_equals_the_registered_datasets(tmp_path, capsys):
    from detectron2.data.datasets import register_coco_instances

    path = write_coco(tmp_path / "anno.json", BOXES)
    register_coco_instances("level_report_json_test", {}, path, str(tmp_path))
    common = ["--config-file", TINY, "--output"]
    assert level_report(["--dataset", "level_report_json_test", *common, str(tmp_path / "a.png")]) == 0
    registered = capsys.readouterr().out
    assert level_report(["--json", path, *common, str(tmp_path / "b.png")]) == 0
    from_json = capsys.readouterr().out
    assert "5 ground-truth boxes in 3 images" in from_json
    body = lambda text: text.split("\n", 1)[1].rsplit("wrote", 1)[0]  # noqa: E731  (the title names the source)
    assert body(from_json) == body(registered)


@pytest.mark.parametrize("content, says", [
    ({"images": []}, r"is not a COCO json: no 'annotations' list"),
    ({"annotations": []}, r"is not a COCO json: no 'images' list"),
    ([1, 2], r"is not a COCO json: no 'images' or 'annotations' list"),
])
def test_a_json_that_is_not_coco(tmp_path, capsys, content, says):
    import re

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    assert level_report(["--config-file", TINY, "--json", str(path), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and re.search(says, err), err
    assert not (tmp_path / "x.png").exists()


def test_images_without_a_size(tmp_path, capsys):
    path = tmp_path / "nosize.json"
    coco = json.loads(open(write_coco(path, BOXES)).read())
    del coco["images"][1]["height"]
    path.write_text(json.dumps(coco))
    assert level_report(["--config-file", TINY, "--json", str(path), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nosize.json: 1 of 3 images have no positive width and height, e.g. id 2 (001.jpg)" in err


def test_degenerate_boxes_are_counted_and_skipped(tmp_path, capsys):
    path = write_coco(tmp_path / "a.json", [[(10, 10, 0, 30), (10, 10, 20, -5), (50, 40, 80, 60)]])
    assert level_report(["--config-file", TINY, "--json", path, "--output", str(tmp_path / "x.png")]) == 0
    captured = capsys.readouterr()
    assert "2 boxes of zero or negative width or height skipped" in captured.err
    assert "1 ground-truth boxes in 1 images" in captured.out


@pytest.mark.parametrize("boxes", [[[(40, 40, 30, 30)]], [[(10, 10, 25, 25), (100, 50, 25, 25)], [(60, 60, 25, 25)]]],
                         ids=["one box", "one size"])
def test_a_single_box_or_a_single_size(tmp_path, capsys, boxes):
    path = write_coco(tmp_path / "a.json", boxes)
    assert level_report(["--config-file", TINY, "--json", path, "--output", str(tmp_path / "x.png")]) == 0
    assert "CANONICAL_SIZE:" in capsys.readouterr().out


def test_no_pooled_level_in_the_config(tmp_path, capsys):
    path = write_coco(tmp_path / "a.json", BOXES)
    assert level_report(["--config-file", TINY, "--json", path, "--output", str(tmp_path / "x.png"),
                         "MODEL.ROI_HEADS.IN_FEATURES", "['res5']"]) == 2
    assert "MODEL.ROI_HEADS.IN_FEATURES" in capsys.readouterr().err


def gt_of_sizes(sizes, image=(400, 400)):
    from fpn_plugin.analysis.anchor_coverage import gt_boxes
    from detectron2.structures import BoxMode

    record = {"height": image[0], "width": image[1], "annotations": [
        {"bbox": [10.0, 10.0, float(s), float(s)], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0} for s in sizes]}
    return gt_boxes([record])


def test_input_scale_warning_fires_above_its_threshold_only():
    from fpn_plugin.analysis.pyramid_fit import input_scale_advice

    # 100 boxes; those of 2 px are under one cell of a stride-4 map
    below = gt_of_sizes([2.0] * 4 + [16.0] * 96)   # 4%: no warning
    above = gt_of_sizes([2.0] * 6 + [16.0] * 94)   # 6%: a warning
    assert input_scale_advice(below, 4, 0) is None
    advice = input_scale_advice(above, 4, 0)
    assert advice["share"] == pytest.approx(0.06)
    # by hand: 5% of the boxes are at most np.quantile(sizes, 0.05) px; scaling by 4 / that lifts them to one cell
    q = np.quantile([2.0] * 6 + [16.0] * 94, 0.05)
    assert advice["factor"] == pytest.approx(4 / q)
    assert advice["min_size"] == int(np.ceil(400 * 4 / q / 32) * 32)
    assert advice["pixels_then"] == pytest.approx(400 * 400 * (4 / q) ** 2)
