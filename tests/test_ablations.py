"""The paper's ablation rows: every variant trains and infers; the runner writes the tables."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

from conftest import ROOT

PROJECT = os.path.join(ROOT, "projects", "FPN-Ablations")
sys.path.insert(0, PROJECT)  # as when the script runs: its helper module lies beside it
import ablation_stats  # noqa: E402

spec = importlib.util.spec_from_file_location("run_ablations", os.path.join(PROJECT, "run_ablations.py"))
run_ablations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_ablations)

PYRAMID = ["p2", "p3", "p4", "p5", "p6"]
FEATURES = {"a": ["res4"], "b": ["res5"], "c": PYRAMID, "d": PYRAMID, "e": PYRAMID, "f": ["p2"]}


def batch(h, w, train):
    d = {"image": torch.randint(0, 256, (3, h, w)).float(), "height": h, "width": w}
    boxes = torch.tensor([[4.0, 6.0, w / 2, h / 2], [w / 3, h / 4, w - 3, h - 2], [10.0, 10.0, 30.0, 40.0]])
    props = Instances((h, w))
    props.proposal_boxes = Boxes(boxes)
    props.objectness_logits = torch.tensor([2.0, 1.0, 0.5])
    d["proposals"] = props
    if train:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes[:2])
        inst.gt_classes = torch.tensor([0, 2])
        d["instances"] = inst
    return d


@pytest.mark.parametrize("row", list(run_ablations.ROWS))
def test_every_row_trains_and_infers(make_cfg, row):
    config = os.path.join(PROJECT, "configs", run_ablations.ROWS[row][0])
    model = build_model(make_cfg(config))
    assert list(model.backbone.output_shape()) == FEATURES[row[-1]]
    model.train()
    with EventStorage():
        losses = model([batch(96, 128, True), batch(70, 90, True)])
    expected = set()
    if not row.startswith("fast"):
        expected |= {"loss_rpn_cls", "loss_rpn_loc"}
    if not row.startswith("rpn"):
        expected |= {"loss_cls", "loss_box_reg"}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([batch(96, 128, False)])[0]
    key = "proposals" if row.startswith("rpn") else "instances"
    assert out[key].image_size == (96, 128)


def test_unknown_row_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        run_ablations.main(["--rows", "rpn/z"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "rpn/z" in err and "rpn/a" in err and "e2e/c" in err


def test_fast_row_without_proposals_says_which_run_makes_them(tmp_path, caplog):
    assert run_ablations.main(["--rows", "fast/c", "--output", str(tmp_path)]) == 2
    assert "rpn/c" in caplog.text and "box_proposals.pkl" in caplog.text and "--rows rpn/c" in caplog.text


TINY_OPTS = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "INPUT.MIN_SIZE_TRAIN", "(0,)",
    "INPUT.MIN_SIZE_TEST", "0",
]


def test_runner_writes_tables_and_charts_and_skips_finished_rows(tmp_path):
    def runner(*rows):
        env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"), PYTHONWARNINGS="ignore")
        return subprocess.run(
            [sys.executable, os.path.join(PROJECT, "run_ablations.py"), "--rows", *rows, "--output",
             str(tmp_path / "out"), "--train", "fpn_shapes_tiny_train", "--test", "fpn_shapes_tiny_val",
             "--opts", *TINY_OPTS],
            env=env, capture_output=True, text=True, timeout=900,
        )

    r = runner("rpn/c", "rpn/d", "fast/c", "e2e/c")
    assert r.returncode == 0, r.stderr[-3000:]
    tables = (tmp_path / "out" / "TABLES.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3"):
        assert title in tables
    assert "(c) FPN {P2..P6} | " in tables and "(44.0)" in tables  # measured beside the paper's AR@100
    for i in (1, 2, 3):
        with Image.open(tmp_path / "out" / f"table{i}.png") as im:
            assert im.format == "PNG" and im.size == (1080, 360)
    assert (tmp_path / "out" / "rpn_c" / "proposals_train" / "inference" / "fpn_shapes_tiny_train"
            / "box_proposals.pkl").exists()

    r = runner("rpn/c", "fast/c")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rpn/c: finished earlier, not re-run" in r.stderr
    assert "fast/c: finished earlier, not re-run" in r.stderr
    assert "train_net.py" not in r.stderr.split("finished earlier")[0]


def test_mean_and_sample_standard_deviation():
    assert ablation_stats.mean_std([1, 2, 3]) == (2.0, 1.0)
    mean, std = ablation_stats.mean_std([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0 and math.isclose(std, math.sqrt(32 / 7))  # n - 1, not n (which gives 2.0)
    assert ablation_stats.mean_std([7.5]) == (7.5, None)  # one seed: no spread
    mean, std = ablation_stats.mean_std([1.0, float("nan")])
    assert math.isnan(mean) and math.isnan(std)
    with pytest.raises(ValueError):
        ablation_stats.mean_std([])


@pytest.mark.parametrize("a, b, expected", [
    ((2.0, 1.0), (5.0, 1.0), True),       # 3 apart, spreads sum to 2
    ((5.0, 1.0), (2.0, 1.0), True),       # either order
    ((2.0, 1.0), (4.0, 1.0), False),      # 2 apart, spreads sum to 2: on the boundary, not real
    ((2.0, 1.0), (4.25, 1.0), True),      # just past it
    ((2.0, 1.5), (4.25, 1.0), False),     # the same gap with a wider spread
    ((2.0, 0.0), (2.0, 0.0), False),
    ((2.0, None), (9.0, 1.0), None),      # one seed: not judged
    ((float("nan"), 1.0), (9.0, 1.0), None),
])
def test_real_gap_rule(a, b, expected):
    assert ablation_stats.real_gap(*a, *b) is expected
