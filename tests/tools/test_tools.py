"""The tools around the model: pyramid picture, level report, demo, export, model analysis."""
import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from PIL import Image

from helpers import ROOT, TINY


def tool(name):
    path = os.path.join(ROOT, "demo.py") if name == "demo" else os.path.join(ROOT, "tools", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_pyramid_picture_grows_with_the_maps_it_shows(tmp_path, image, capsys):
    sizes = {}
    for zoom in (1, 2):
        out = tmp_path / f"pyr{zoom}.png"
        assert tool("visualize_pyramid")(["--config-file", TINY, "--input", image, "--output", str(out),
                                          "--zoom", str(zoom)]) == 0
        with Image.open(out) as im:
            assert im.format == "PNG"
            sizes[zoom] = im.size
    assert "detections" in capsys.readouterr().out
    # By hand: the 70x90 image is padded to 96x96, so the tallest maps (C2, P2) are 24 cells and
    # each of the two rows of maps grows by 24 px from zoom 1 to 2; the widest row, P2..P6 (24 +
    # 12 + 6 + 3 + 2 = 47 cells and 4 gaps of 6 px), outgrows the 90 px image: 118 - 90 = 28 px.
    assert (sizes[2][0] - sizes[1][0], sizes[2][1] - sizes[1][1]) == (28, 48)


def test_pyramid_picture_bad_inputs(tmp_path, image, capsys, make_cfg):
    main = tool("visualize_pyramid")
    out = tmp_path / "never.png"
    assert main(["--config-file", TINY, "--input", str(tmp_path / "nope.jpg"), "--output", str(out)]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00 not an image")
    assert main(["--config-file", TINY, "--input", str(bad), "--output", str(out)]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["--config-file", TINY, "--input", image, "--output", str(blocker / "x.png")]) == 2
    assert "cannot write" in capsys.readouterr().err
    # weights of the 128 variant into the 256 config
    weights = tmp_path / "w128.pth"
    torch.save({"model": build_model(make_cfg("fpn_paper_128.yaml")).state_dict()}, weights)
    assert main(["--config-file", TINY, "--input", image, "--output", str(out), "MODEL.WEIGHTS", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "w128.pth" in err and "do not fit" in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_level_report_counts_equal_a_direct_computation(tmp_path, capsys):
    out = tmp_path / "levels.png"
    assert tool("level_report")(["--config-file", TINY, "--dataset", "fpn_shapes_tiny_val", "--output", str(out),
                                 "INPUT.MIN_SIZE_TEST", "0"]) == 0
    text = capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
    from detectron2.data import MetadataCatalog

    with open(MetadataCatalog.get("fpn_shapes_tiny_val").json_file) as f:
        coco = json.load(f)
    sizes = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]])
    k = np.clip(np.floor(4 + np.log2(sizes / 40) + 1e-6), 2, 5)  # the tiny config's k0 = 4, canonical 40
    for level in (2, 3, 4, 5):
        assert f"| P{level} | {int((k == level).sum())} |" in text
    assert f"{len(sizes)} ground-truth boxes" in text
    assert f"| all | {len(sizes)} |" in text and "CANONICAL_SIZE:" in text  # coverage table, suggestion


def test_level_report_bad_inputs(tmp_path, capsys):
    main = tool("level_report")
    out = tmp_path / "levels.png"
    assert main(["--config-file", TINY, "--dataset", "no_such_set", "--output", str(out)]) == 2
    assert "no_such_set" in capsys.readouterr().err
    assert main(["--config-file", str(tmp_path / "gone.yaml"), "--dataset", "fpn_shapes_tiny_val",
                 "--output", str(out)]) == 2
    assert "gone.yaml" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["--config-file", TINY, "--dataset", "fpn_shapes_tiny_val", "--output", str(blocker / "x.png"),
                 "--max-images", "2"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not out.exists()


def test_demo_on_files_and_a_folder(tmp_path, image, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(2):
        Image.open(image).save(folder / f"f{i}.jpg")
    out = tmp_path / "drawn"
    assert tool("demo")(["--config-file", TINY, "--input", image, str(folder), "--output", str(out),
                         "--confidence", "0.0"]) == 0
    assert sorted(os.listdir(out)) == ["f0.png", "f1.png", "img.png"]
    with Image.open(out / "img.png") as im:
        assert im.size == (90, 70)
    assert tool("demo")(["--config-file", TINY, "--input", image, str(tmp_path / "gone.png"),
                         "--output", str(tmp_path / "none")]) == 2
    assert "gone.png" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("fmt", ["torchscript", "tracing", "onnx"])
def test_export_round_trip(tmp_path, fmt, capsys):
    assert tool("export_model")(["--config-file", TINY, "--format", fmt, "--output", str(tmp_path),
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                 "INPUT.MIN_SIZE_TEST", "288", "INPUT.MAX_SIZE_TEST", "400"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith(f"| {fmt} |")][0]
    h, w = ResizeShortestEdge.get_output_shape(256, 320, 288, 400)  # the 256x320 sample, resized as at test time
    assert f"input {h}x{w} " in out
    diff = float(row.split("|")[3])
    # px and score units. Scripting and tracing are exact; ONNX Runtime's kernels differ from
    # PyTorch's in float rounding, which the untrained box deltas amplify to a few hundredths of a px.
    assert diff < (0.1 if fmt == "onnx" else 1e-4), row
    assert len(os.listdir(tmp_path)) == 1


def test_export_that_differs_from_eager_is_refused(tmp_path, capsys, monkeypatch):
    from fpn_plugin.engine import export

    monkeypatch.setattr(export, "export_traced", lambda model, image, path: {"max_abs_diff": 189.0})
    assert tool("export_model")(["--config-file", TINY, "--format", "tracing", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tracing: not written" in err and "differ from eager PyTorch's by 189" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_timm_bottom_up_scripts_and_traces_equal_to_eager(tmp_path, capsys):
    pytest.importorskip("timm")
    assert tool("export_model")(["--config-file", TINY, "--format", "torchscript", "tracing", "--output", str(tmp_path),
                                 "MODEL.FPN_PAPER.BOTTOM_UP", "build_timm_backbone", "MODEL.TIMM.NAME", "convnext_atto",
                                 "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| torchscript", "| tracing"))]
    assert len(rows) == 2 and all(float(r.split("|")[3]) < 1e-4 for r in rows), rows


@pytest.mark.parametrize("neck", ["BottomUpPyramid", "TopDownNoLateral"])
def test_ablation_necks_script_with_the_same_forward(tmp_path, capsys, neck):
    assert tool("export_model")(["--config-file", TINY, "--format", "torchscript", "--output", str(tmp_path),
                                 "MODEL.FPN_PAPER.NECK", neck, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| torchscript |")][0]
    assert float(row.split("|")[3]) < 1e-4, row


def test_model_analysis_covers_every_neck_and_width(tmp_path, capsys, make_cfg):
    out = tmp_path / "a.json"
    assert tool("analyze_model")(["--config-file", TINY, "--size", "64", "96", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    from fpn_plugin import NECK_REGISTRY

    assert set(data) == {"256 (paper)", "128 outputs"} | {f"neck {n}" for n, _ in NECK_REGISTRY if n != "PaperFPN"}
    from fpn_plugin.config import load_config

    widths = ["MODEL.FPN_PAPER.TOP_DOWN_CHANNELS", 256, "MODEL.FPN_PAPER.OUT_CHANNELS", 256]
    neck = build_model(load_config(TINY, ["MODEL.DEVICE", "cpu", *widths])).backbone
    direct = sum(p.numel() for n, p in neck.named_parameters() if not n.startswith("bottom_up."))
    assert data["256 (paper)"]["neck"]["params"] == direct
    assert data["128 outputs"]["neck"]["params"] < direct
    assert all(v["total"]["gflops"] > 0 for v in data.values())


def _predictor(cfg):
    """Detectron2's own DefaultPredictor, built here without any fpn_plugin helper."""
    from detectron2.engine import DefaultPredictor

    return DefaultPredictor(cfg)


def _random_weights(tmp_path, *opts):
    from fpn_plugin.config import load_config

    path = tmp_path / "random.pth"
    torch.save({"model": build_model(load_config(TINY, list(opts))).state_dict()}, path)
    return str(path)


def test_demo_detections_are_default_predictors(tmp_path, image, capsys):
    """On an image of another size than the test size, the demo's detections (its
    detections.json) are DefaultPredictor's: same boxes, scores and classes, in order."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image

    from fpn_plugin.config import load_config

    # A test-time resize (the tiny config tests at native size), so that it matters.
    opts = ["MODEL.WEIGHTS", _random_weights(tmp_path), "TEST.DETECTIONS_PER_IMAGE", "30",
            "INPUT.MIN_SIZE_TEST", "288", "INPUT.MAX_SIZE_TEST", "400"]
    out = tmp_path / "drawn"
    assert tool("demo")(["--config-file", TINY, "--input", image, "--output", str(out), "--confidence", "0.0",
                         "--levels"] + opts) == 0
    records = json.loads((out / "detections.json").read_text())
    cfg = load_config(TINY, opts + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    bgr = read_image(image, format="BGR")
    expected = _predictor(cfg)(bgr)["instances"]
    assert len(records) == len(expected) > 0
    assert f"with {len(records)} detections" in capsys.readouterr().out  # as many as were drawn
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)])
    torch.testing.assert_close(xyxy, expected.pred_boxes.tensor, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor([r["score"] for r in records]), expected.scores, rtol=0, atol=1e-6)
    mapping = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_dataset_id_to_contiguous_id") or {}
    to_dataset = {v: k for k, v in mapping.items()}
    assert [r["category_id"] for r in records] == [to_dataset.get(c, c) for c in expected.pred_classes.tolist()]
    assert {r["image_id"] for r in records} == {0} and {r["file_name"] for r in records} == {image}
    assert all(isinstance(r["level"], int) and 2 <= r["level"] <= 5 for r in records)
    assert all(r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in records)
    # The resize is what makes them equal: the image fed at its own size (the old demo) differs.
    model = _predictor(cfg).model
    with torch.no_grad():
        unresized = model([{"image": torch.as_tensor(bgr.transpose(2, 0, 1).copy()), "height": 70, "width": 90}])
    boxes = unresized[0]["instances"].pred_boxes.tensor
    assert boxes.shape != expected.pred_boxes.tensor.shape or not torch.allclose(boxes, expected.pred_boxes.tensor)


def test_demo_levels_file_covers_every_image_and_colour_by_level_draws(tmp_path, image, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.open(image).resize((120, 60)).save(folder / "b.png")
    Image.open(image).save(folder / "a.png")
    plain, coloured = tmp_path / "plain", tmp_path / "coloured"
    args = ["--config-file", TINY, "--input", str(folder), "--confidence", "0.0", "--levels"]
    opts = ["MODEL.WEIGHTS", _random_weights(tmp_path), "TEST.DETECTIONS_PER_IMAGE", "10"]
    assert tool("demo")(args + ["--output", str(plain)] + opts) == 0
    assert tool("demo")(args + ["--output", str(coloured), "--color-by-level"] + opts) == 0
    records = json.loads((plain / "detections.json").read_text())
    assert records == json.loads((coloured / "detections.json").read_text())
    assert [r["file_name"] for r in records] == sorted(r["file_name"] for r in records)
    by_image = {i: [r for r in records if r["image_id"] == i] for i in (0, 1)}
    assert len(by_image[0]) == len(by_image[1]) == 10 and len(records) == 20
    assert {r["file_name"] for r in by_image[1]} == {str(folder / "b.png")}
    with Image.open(plain / "b.png") as a, Image.open(coloured / "b.png") as b:
        assert a.size == b.size == (120, 60)
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # the colours follow the levels
    assert sorted(os.listdir(coloured)) == ["a.png", "b.png", "detections.json"]


def test_demo_without_levels_writes_no_levels_file(tmp_path, image):
    out = tmp_path / "drawn"
    assert tool("demo")(["--config-file", TINY, "--input", image, "--output", str(out)]) == 0
    assert os.listdir(out) == ["img.png"]


def test_levels_survive_postprocessing_and_empty_outputs(tmp_path, image):
    """Through DefaultPredictor (resize, post-processing back to image pixels) every output
    carries one level per detection, also when nothing passes the score threshold."""
    from detectron2.data.detection_utils import read_image

    from fpn_plugin.config import load_config

    bgr = read_image(image, format="BGR")
    for thresh, nonempty in ((0.0, True), (1.0, False)):
        cfg = load_config(TINY, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", thresh, "MODEL.FPN_PAPER.PRED_LEVELS", True])
        inst = _predictor(cfg)(bgr)["instances"]
        assert (len(inst) > 0) == nonempty
        assert inst.pred_levels.shape == (len(inst),) and inst.pred_levels.dtype == torch.int64


def test_pyramid_picture_of_a_stock_detectron2_model(tmp_path, image, capsys):
    """Detectron2's own faster_rcnn_R_50_FPN_1x (its FPN backbone and StandardROIHeads, random
    weights) gives the picture too, and --confidence decides what is drawn."""
    from detectron2 import model_zoo

    config = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]
    main = tool("visualize_pyramid")
    drawn = {}
    for confidence in ("0.0", None):
        out = tmp_path / f"stock_{confidence}.png"
        args = ["--config-file", config, "--input", image, "--output", str(out), "--zoom", "1"]
        torch.manual_seed(0)  # the same random weights in each run
        assert main(args + (["--confidence", confidence] if confidence else []) + opts) == 0
        with Image.open(out) as im:
            # By hand: 70x90 resized to a 128 px short side is 128x165, padded to 128x192; maps of
            # 32x48, 16x24, 8x12, 4x6 (C2..C5, P2..P5) and 2x3 (P6). Width: P row 93 + 4 gaps of
            # 6 = 117, + 2 margins = 129. Height: 70 + 32 + 32 + 3 x (14 label + 6 gap) + 6 = 200.
            assert im.format == "PNG" and im.size == (129, 200)
        text = capsys.readouterr().out
        drawn[confidence] = tuple(int(v) for v in re.search(r"(\d+) detections drawn .* of (\d+)", text).groups())
    from detectron2.data.detection_utils import read_image

    from fpn_plugin.config import load_config

    torch.manual_seed(0)
    scores = _predictor(load_config(config, opts))(read_image(image, format="BGR"))["instances"].scores
    assert drawn["0.0"] == (len(scores), len(scores)) and len(scores) > 0  # everything drawn
    assert drawn[None] == (int((scores >= 0.5).sum()), len(scores))  # the default keeps scores >= 0.5
    assert drawn[None][0] < len(scores)  # and here that leaves some out
