"""The tools around the model: pyramid picture, level report, demo, export, model analysis."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from PIL import Image

from conftest import ROOT
from fpn_plugin.visualize import pyramid_canvas_size

TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


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


def test_pyramid_picture_has_the_expected_size(tmp_path, image, capsys):
    out = tmp_path / "pyr.png"
    assert tool("visualize_pyramid")(["--config-file", TINY, "--input", image, "--output", str(out),
                                      "--zoom", "1"]) == 0
    # 70x90 resized as at test time (short side 288, long side <= 400), padded to 32
    h, w = ResizeShortestEdge.get_output_shape(70, 90, 288, 400)
    ph, pw = (math.ceil(v / 32) * 32 for v in (h, w))
    maps = lambda strides: [(math.ceil(ph / s), math.ceil(pw / s)) for s in strides]  # noqa: E731
    expected = pyramid_canvas_size((70, 90), [maps([4, 8, 16, 32]), maps([4, 8, 16, 32, 64])], zoom=1)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == expected
    assert "detections" in capsys.readouterr().out


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
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_level_report_counts_equal_a_direct_computation(tmp_path, capsys):
    out = tmp_path / "levels.png"
    assert tool("level_report")(["--config-file", TINY, "--dataset", "fpn_shapes_tiny_val", "--output", str(out),
                                 "INPUT.MIN_SIZE_TEST", "0"]) == 0
    text = capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (640, 320)
    from detectron2.data import MetadataCatalog

    with open(MetadataCatalog.get("fpn_shapes_tiny_val").json_file) as f:
        coco = json.load(f)
    sizes = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]])
    k = np.clip(np.floor(4 + np.log2(sizes / 224) + 1e-6), 2, 5)
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
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {fmt} |")][0]
    diff = float(row.split("|")[3])
    # px and score units. Scripting and tracing are exact; ONNX Runtime's kernels differ from
    # PyTorch's in float rounding, which the untrained box deltas amplify to a few hundredths of a px.
    assert diff < (0.1 if fmt == "onnx" else 1e-4), row
    assert len(os.listdir(tmp_path)) == 1


def test_scripting_an_ablation_neck_says_to_trace(tmp_path, capsys):
    code = tool("export_model")(["--config-file", TINY, "--format", "torchscript", "--output", str(tmp_path),
                                 "MODEL.FPN_PAPER.NECK", "BottomUpPyramid"])
    assert code == 2 and "tracing" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_model_analysis_covers_every_neck_and_width(tmp_path, capsys, make_cfg):
    out = tmp_path / "a.json"
    assert tool("analyze_model")(["--config-file", TINY, "--size", "64", "96", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    from fpn_plugin import NECK_REGISTRY

    assert set(data) == {"256 (paper)", "128 outputs"} | {f"neck {n}" for n in NECK_REGISTRY._obj_map if n != "PaperFPN"}
    neck = build_model(make_cfg("fpn_paper.yaml")).backbone
    direct = sum(p.numel() for n, p in neck.named_parameters() if not n.startswith("bottom_up."))
    assert data["256 (paper)"]["neck"]["params"] == direct
    assert data["128 outputs"]["neck"]["params"] < direct
    assert all(v["total"]["gflops"] > 0 for v in data.values())
