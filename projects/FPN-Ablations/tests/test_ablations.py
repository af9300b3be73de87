"""The paper's ablation rows: every variant trains and infers; the runner runs each row over
several seeds, resumably, and writes mean ± std tables, summary.json and charts."""
import hashlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    boxes = (out[key].proposal_boxes if row.startswith("rpn") else out[key].pred_boxes).tensor
    assert len(boxes) > 0 and (boxes >= 0).all()
    assert (boxes[:, 0::2] <= 128).all() and (boxes[:, 1::2] <= 96).all()  # clipped to the 96x128 image


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
             str(tmp_path / "out"), "--seeds", "1", "--train", "fpn_shapes_tiny_train",
             "--test", "fpn_shapes_tiny_val",
             "--opts", *TINY_OPTS],
            env=env, capture_output=True, text=True, timeout=900,
        )

    r = runner("rpn/c", "rpn/d", "fast/c", "e2e/c")
    assert r.returncode == 0, r.stderr[-3000:]
    tables = (tmp_path / "out" / "TABLES.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3"):
        assert title in tables
    assert "| (c) FPN {P2..P6} | 1 | " in tables and "± n/a (44.0)" in tables  # one seed: no spread
    seed_out = tmp_path / "out" / "rpn_c" / "seed42"
    assert "SEED: 42" in (seed_out / "config.yaml").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    entry = summary["tables"]["rpn"]["rows"]["rpn/c"]
    assert entry["n"] == 1 and entry["std"]["AR@100"] is None
    assert entry["per_seed"]["42"]["AR@100"] == json.loads((seed_out / "results.json").read_text())[
        "box_proposals"]["AR@100"]
    for i in (1, 2, 3):
        with Image.open(tmp_path / "out" / f"table{i}.png") as im:
            assert im.format == "PNG" and im.size == (1080, 360)
    assert (seed_out / "proposals_train" / "inference" / "fpn_shapes_tiny_train" / "box_proposals.pkl").exists()

    r = runner("rpn/c", "fast/c")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rpn/c seed 42: finished earlier, not re-run" in r.stderr
    assert "fast/c seed 42: finished earlier, not re-run" in r.stderr
    assert "train_net.py" not in r.stderr.split("finished earlier")[0]


# The runner's statistics and its seed loop, on hand-made per-seed numbers and a stand-in train_net.

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


def fake_results(task, metrics, values, seconds):
    return {task: dict(zip(metrics, values)), "seconds": seconds}


def test_summary_and_tables_aggregate_seeds_and_mark_real_gaps(tmp_path):
    _, task, metrics = run_ablations.TABLES["fast"]  # AP50, AP, APs, APm, APl
    seeds = run_ablations.seed_values(3)
    assert seeds == [42, 1042, 2042]
    per_seed = {
        # (c): AP50 1, 2, 3 -> 2 ± 1; AP 10, 10, 10 -> 10 ± 0
        "fast/c": {s: fake_results(task, metrics, [v, 10, 5, 5, 5], 60) for s, v in zip(seeds, (1, 2, 3))},
        # (b): AP50 5, 6, 7 -> 6 ± 1, 4 above (c) > 1 + 1: real; AP 9, 10, 11 -> 10 ± 1: no gap
        "fast/b": {s: fake_results(task, metrics, [v, w, 5, 5, 5], 30)
                   for s, v, w in zip(seeds, (5, 6, 7), (9, 10, 11))},
        # (d): one seed: mean only, nothing judged
        "fast/d": {42: fake_results(task, metrics, [0, 0, 0, 0, 0], 90)},
        # (a): AP 6, 7, 8 -> 7 ± 1, 3 below (c) > 1 + 0: real; AP50 0, 2, 4 -> 2 ± 2: no gap
        "fast/a": {s: fake_results(task, metrics, [v, w, 5, 5, 5], 120)
                   for s, v, w in zip(seeds, (0, 2, 4), (6, 7, 8))},
    }
    lines = run_ablations.write_outputs(per_seed, seeds, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == seeds and "n - 1" in summary["std"]
    table = summary["tables"]["fast"]
    assert list(table["rows"]) == ["fast/a", "fast/b", "fast/c", "fast/d"]  # the paper's order
    c, b, a, d = (table["rows"][r] for r in ("fast/c", "fast/b", "fast/a", "fast/d"))
    assert c["per_seed"]["1042"]["AP50"] == 2 and c["mean"]["AP50"] == 2 and c["std"]["AP50"] == 1
    assert c["std"]["AP"] == 0 and "real_gap_vs_c" not in c and c["paper"]["AP"] == 33.9
    assert b["mean"]["AP50"] == 6 and b["gap_vs_c"]["AP50"] == 4 and b["real_gap_vs_c"]["AP50"] is True
    assert b["real_gap_vs_c"]["AP"] is False
    assert a["gap_vs_c"]["AP"] == -3 and a["real_gap_vs_c"]["AP"] is True and a["real_gap_vs_c"]["AP50"] is False
    assert d["n"] == 1 and d["std"]["AP"] is None and d["real_gap_vs_c"]["AP"] is None
    assert c["seconds"] == {"42": 60, "1042": 60, "2042": 60} and c["seconds_total"] == 180
    assert table["seconds_total"] == 180 + 90 + 90 + 360 and summary["seconds_total"] == 720
    assert set(summary["tables"]) == {"fast"}

    text = "\n".join(lines)
    assert (tmp_path / "TABLES.md").read_text().strip() == text.strip()
    assert "| (b) C5, 2fc head | 3 | 6.0 ± 1.0 ▲ (52.9) | 10.0 ± 1.0 (28.8) |" in text
    assert "| (a) C4 baseline, conv5 head | 3 | 2.0 ± 2.0 (54.7) | 7.0 ± 1.0 ▼ (31.9) |" in text
    assert "| (d) bottom-up pyramid only | 1 | 0.0 ± n/a (44.9) |" in text
    assert text.split("(c) FPN")[1].split("\n")[0].endswith("| 3.0 |")  # minutes: 3 seeds x 60 s
    assert "Wall time of the table: 12.0 minutes" in text
    with Image.open(tmp_path / "table2.png") as im:
        assert im.format == "PNG"
    assert not (tmp_path / "table1.png").exists()

    # the error bars drawn: mean ± std per metric for (c); none at all for (d)'s one seed
    # (its caps' heights are NaN, which matplotlib leaves undrawn; a spread of 0 would draw caps)
    import matplotlib.pyplot as plt

    fig = run_ablations.chart(table)
    bars = {c.get_label().split(" (n=")[0]: c for c in fig.axes[0].containers}
    c_caps = bars["(c) FPN {P2..P5}, 2fc head"].errorbar.lines[1]
    assert list(c_caps[0].get_ydata()) == [1, 10, 5, 5, 5]  # mean - std: AP50 2 - 1, AP 10 - 0, ...
    assert list(c_caps[1].get_ydata()) == [3, 10, 5, 5, 5]  # mean + std
    d_caps = bars["(d) bottom-up pyramid only"].errorbar.lines[1]
    assert all(math.isnan(y) for cap in d_caps for y in cap.get_ydata())
    # the legend, one entry per row, lies below both plots and so covers no bar
    fig.canvas.draw()
    legend = fig.legends[0]
    assert [t.get_text().split(" (n=")[0] for t in legend.get_texts()] == [e["label"] for e in table["rows"].values()]
    assert all(legend.get_window_extent().y1 <= ax.get_window_extent().y0 for ax in fig.axes)
    plt.close(fig)


class FakeTrainNet:
    """Stands in for train_net.py: records each call and writes eval_results.json where asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, env):
        args = [str(a) for a in args]
        self.calls.append(args)
        out = args[len(args) - 1 - args[::-1].index("OUTPUT_DIR") + 1]  # the last OUTPUT_DIR wins
        os.makedirs(out, exist_ok=True)
        seed = int(args[args.index("SEED") + 1])
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump({"box_proposals": {"AR@100": seed / 100}, "bbox": {"AP": seed / 1000}}, f)

    def seeds(self):
        return [int(c[c.index("SEED") + 1]) for c in self.calls]


def finish(output, row, seed, **results):
    folder = output / row.replace("/", "_") / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"seconds": 10.0, **results}))
    return folder


def test_seeds_resume_a_half_finished_set(tmp_path, monkeypatch, capsys):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    finish(tmp_path, "rpn/a", 42, box_proposals={"AR@100": 1.0})
    finish(tmp_path, "rpn/a", 2042, box_proposals={"AR@100": 3.0})
    half = tmp_path / "rpn_a" / "seed1042"
    half.mkdir()
    (half / "last_checkpoint").write_text("model_0000049.pth")  # interrupted
    (half / "seconds_spent").write_text("5.0")

    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "3", "--output", str(tmp_path)]) == 0
    assert fake.seeds() == [1042]  # only the unfinished seed runs
    call = fake.calls[0]
    assert "--resume" in call and call[call.index("OUTPUT_DIR") + 1] == str(half)
    results = json.loads((half / "results.json").read_text())
    assert results["seed"] == 1042 and results["box_proposals"]["AR@100"] == 10.42
    assert results["seconds"] >= 5.0  # the interrupted attempt's time counts
    entry = json.loads((tmp_path / "summary.json").read_text())["tables"]["rpn"]["rows"]["rpn/a"]
    assert entry["n"] == 3 and entry["per_seed"]["1042"]["AR@100"] == 10.42
    assert entry["mean"]["AR@100"] == pytest.approx((1.0 + 10.42 + 3.0) / 3)

    fake.calls.clear()  # all finished now: a second call runs nothing, a larger --seeds only the new seed
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "3", "--output", str(tmp_path)]) == 0
    assert fake.calls == []
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "4", "--output", str(tmp_path)]) == 0
    assert fake.seeds() == [3042]
    capsys.readouterr()


STOPPED_BY_SIGTERM = """
import os, signal, sys, time
sys.path.insert(0, {project!r})
import run_ablations

def train_net(*args, env):  # the seed in flight when `kill` arrives
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

run_ablations.train_net = train_net
sys.exit(run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", {output!r}]))
"""


def test_sigterm_keeps_the_time_of_the_seed_in_flight(tmp_path):
    script = STOPPED_BY_SIGTERM.format(project=PROJECT, output=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + 15, proc.stderr  # by default SIGTERM ends it at once: -15
    spent = float((tmp_path / "rpn_a" / "seed42" / "seconds_spent").read_text())
    assert 0.0 <= spent < 30.0  # recorded when the signal came, not after the sleep
    assert not (tmp_path / "rpn_a" / "seed42" / "results.json").exists()  # not finished


def test_main_leaves_the_callers_sigterm_handler(tmp_path, monkeypatch):
    monkeypatch.setattr(run_ablations, "train_net", FakeTrainNet())
    before = signal.getsignal(signal.SIGTERM)
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", str(tmp_path)]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_fast_rows_use_the_proposals_of_the_same_seed_of_rpn_c(tmp_path, monkeypatch, caplog):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    train_set, test_set = "fpn_shapes_train", "fpn_shapes_val"
    for path in run_ablations.proposal_files(str(tmp_path), 42, train_set, test_set):
        os.makedirs(os.path.dirname(path))
        open(path, "wb").close()

    assert run_ablations.main(["--rows", "fast/c", "--seeds", "2", "--output", str(tmp_path)]) == 2
    assert fake.seeds() == [42]  # seed 0 ran on seed 0's proposals, seed 1 has none
    assert os.path.join(str(tmp_path), "rpn_c", "seed42", "proposals_train") in " ".join(fake.calls[0])
    missing = run_ablations.proposal_files(str(tmp_path), 1042, train_set, test_set)[0]
    assert "fast/c seed 1042" in caplog.text and missing in caplog.text
    assert f"--rows rpn/c --seeds 2 --output {tmp_path}" in caplog.text


def write_proposals(output, seed, train=b"train proposals", test=b"test proposals"):
    """Stand-in proposal files of seed ``seed`` of rpn/c; returns their sha256s as the runner records them."""
    paths = run_ablations.proposal_files(str(output), seed, "fpn_shapes_train", "fpn_shapes_val")
    for path, content in zip(paths, (train, test)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    return {"train": hashlib.sha256(train).hexdigest(), "test": hashlib.sha256(test).hexdigest()}


def test_fast_seed_records_its_proposals_and_refuses_them_changed(tmp_path, monkeypatch, caplog, capsys):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    record = write_proposals(tmp_path, 42)
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(tmp_path)]) == 0
    seed_out = tmp_path / "fast_c" / "seed42"
    assert json.loads((seed_out / "results.json").read_text())["proposals"] == record
    assert json.loads((seed_out / "proposals.json").read_text()) == record
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tables"]["fast"]["rows"]["fast/c"]["proposals"] == {"42": record}
    known = run_ablations.known_seeds(str(tmp_path / "summary.json"))
    assert known["fast/c"][42]["proposals"] == record  # a --known call checks them too

    # rpn/c seed 42 trained again: other proposals. Every call is refused before anything trains,
    # also one for other rows, since its tables would hold the mixed seed; nothing is overwritten.
    write_proposals(tmp_path, 42, train=b"new train proposals")
    before = (tmp_path / "summary.json").read_text()
    fake.calls.clear()
    for rows in (["fast/c"], ["rpn/a"]):
        assert run_ablations.main(["--rows", *rows, "--seeds", "1", "--output", str(tmp_path)]) == 2
    assert fake.calls == [] and (tmp_path / "summary.json").read_text() == before
    assert "fast/c seed 42 was trained on other proposals than seed 42 of rpn/c holds now" in caplog.text
    assert str(seed_out) in caplog.text

    # the same seed recorded in a summary (--known) and checked against another output's proposals
    caplog.clear()
    other = tmp_path / "other"
    write_proposals(other, 42, test=b"other test proposals")
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(other),
                               "--known", str(tmp_path / "summary.json")]) == 2
    assert fake.calls == [] and "fast/c seed 42 was trained on other proposals" in caplog.text
    caplog.clear()
    write_proposals(other, 42)  # the very proposals it trained on: counted, not re-run
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(other),
                               "--known", str(tmp_path / "summary.json")]) == 0
    assert fake.calls == []
    capsys.readouterr()


def test_rpn_c_trained_again_in_the_same_call_writes_no_mixed_tables(tmp_path, monkeypatch, caplog):
    record = write_proposals(tmp_path, 42)
    finish(tmp_path, "fast/c", 42, bbox={"AP": 30.0}, proposals=record)  # trained on these

    class NewProposals(FakeTrainNet):  # rpn/c seed 42 (no results.json) trains and writes others
        def __call__(self, *args, env):
            super().__call__(*args, env=env)
            write_proposals(tmp_path, 42, train=b"new train proposals")

    monkeypatch.setattr(run_ablations, "train_net", NewProposals())
    assert run_ablations.main(["--rows", "rpn/c", "--seeds", "1", "--output", str(tmp_path)]) == 2
    assert (tmp_path / "rpn_c" / "seed42" / "results.json").exists()  # its own result is kept
    assert not (tmp_path / "summary.json").exists() and "fast/c seed 42 was trained on other" in caplog.text


def test_fast_seed_does_not_resume_on_other_proposals(tmp_path, monkeypatch, caplog):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    record = write_proposals(tmp_path, 42)
    half = tmp_path / "fast_c" / "seed42"
    half.mkdir(parents=True)
    (half / "last_checkpoint").write_text("model_0000049.pth")  # interrupted on the first proposals
    (half / "proposals.json").write_text(json.dumps(dict(record, test=hashlib.sha256(b"old").hexdigest())))
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(tmp_path)]) == 2
    assert fake.calls == [] and not (half / "results.json").exists()
    assert "fast/c seed 42 began training on other proposals" in caplog.text and str(half) in caplog.text

    (half / "proposals.json").write_text(json.dumps(record))  # its own proposals: it resumes
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(tmp_path)]) == 0
    assert fake.seeds() == [42] and "--resume" in fake.calls[0]


SHAPES = "--train fpn_shapes_train --test fpn_shapes_val"


def test_seed_records_its_setting_and_refuses_others(tmp_path, monkeypatch, caplog, capsys):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    finish(tmp_path, "rpn/b", 42, box_proposals={"AR@100": 5.0})  # finished before the record: passes
    opts = ["SOLVER.MAX_ITER", "5"]
    setting = {"train": "fpn_shapes_train", "test": "fpn_shapes_val", "opts": opts}
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", str(tmp_path), "--opts", *opts]) == 0
    assert fake.calls[0][-2:] == opts
    seed_out = tmp_path / "rpn_a" / "seed42"
    assert json.loads((seed_out / "results.json").read_text())["setting"] == setting
    assert json.loads((seed_out / "setting.json").read_text()) == setting
    rows = json.loads((tmp_path / "summary.json").read_text())["tables"]["rpn"]["rows"]
    assert rows["rpn/a"]["setting"] == {"42": setting} and "setting" not in rows["rpn/b"]
    assert f"The seeds trained with: `{SHAPES} --opts SOLVER.MAX_ITER 5`" in (tmp_path / "TABLES.md").read_text()
    assert run_ablations.known_seeds(str(tmp_path / "summary.json"))["rpn/a"][42]["setting"] == setting

    # in another setting, every call whose tables would hold that seed is refused before anything
    # trains: without its --opts, or on another training set
    before = (tmp_path / "summary.json").read_text()
    fake.calls.clear()
    for other in ([], ["--train", "other_train", "--opts", *opts]):
        assert run_ablations.main(["--rows", "rpn/c", "--seeds", "1", "--output", str(tmp_path), *other]) == 2
    assert fake.calls == [] and (tmp_path / "summary.json").read_text() == before
    assert (f"rpn/a seed 42 was trained with {SHAPES} --opts SOLVER.MAX_ITER 5, this call asks for "
            f"{SHAPES} --opts (none)" in caplog.text and str(seed_out) in caplog.text)
    assert "this call asks for --train other_train --test fpn_shapes_val --opts SOLVER.MAX_ITER 5" in caplog.text
    caplog.clear()  # so is one that counts it from a summary (--known) in another output
    other = str(tmp_path / "other")
    known = ["--known", str(tmp_path / "summary.json")]
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", other, *known]) == 2
    assert fake.calls == [] and "rpn/a seed 42 was trained with" in caplog.text
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", other, *known, "--opts", *opts]) == 0
    assert fake.calls == []  # the same setting: counted, not re-run
    capsys.readouterr()


def test_seed_does_not_resume_in_another_setting(tmp_path, monkeypatch, caplog):
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    half = tmp_path / "rpn_a" / "seed42"
    half.mkdir(parents=True)
    (half / "last_checkpoint").write_text("model_0000049.pth")  # interrupted, begun with these --opts
    began = {"train": "fpn_shapes_train", "test": "fpn_shapes_val", "opts": ["SOLVER.MAX_ITER", "5"]}
    (half / "setting.json").write_text(json.dumps(began))
    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", str(tmp_path)]) == 2
    assert fake.calls == [] and not (half / "results.json").exists()
    assert (f"rpn/a seed 42 began training with {SHAPES} --opts SOLVER.MAX_ITER 5" in caplog.text
            and str(half) in caplog.text)
    assert json.loads((half / "setting.json").read_text()) == began  # its record is kept

    assert run_ablations.main(["--rows", "rpn/a", "--seeds", "1", "--output", str(tmp_path),
                               "--opts", "SOLVER.MAX_ITER", "5"]) == 0  # its own setting: it resumes
    assert fake.seeds() == [42] and "--resume" in fake.calls[0]


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "three", ""])
def test_bad_seeds_value_is_refused(value, capsys):
    with pytest.raises(SystemExit) as e:
        run_ablations.main(["--rows", "rpn/c", "--seeds", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "whole number, 1 or more" in err and repr(value) in err


def test_seed_in_opts_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        run_ablations.main(["--rows", "rpn/c", "--opts", "SOLVER.MAX_ITER", "5", "SEED", "7"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_old_single_seed_results_are_ignored(tmp_path, caplog):
    (tmp_path / "rpn_c").mkdir()
    (tmp_path / "rpn_c" / "results.json").write_text(json.dumps({"box_proposals": {"AR@100": 99.0}}))
    assert run_ablations.finished(str(tmp_path), [42]) == {}
    assert "single-seed layout and is ignored" in caplog.text


def test_known_summary_counts_its_seeds_as_finished(tmp_path, monkeypatch, capsys):
    earlier, out = tmp_path / "earlier", tmp_path / "out"
    finish(earlier, "rpn/c", 42, box_proposals={"AR@100": 20.0})
    finish(earlier, "rpn/c", 1042, box_proposals={"AR@100": 24.0})
    finish(earlier, "rpn/a", 42, box_proposals={"AR@100": 5.0})
    fake = FakeTrainNet()
    monkeypatch.setattr(run_ablations, "train_net", fake)
    assert run_ablations.main(["--rows", "rpn/c", "rpn/a", "--seeds", "2", "--output", str(earlier)]) == 0
    assert fake.seeds() == [1042]  # rpn/a seed 1042: AR@100 10.42
    known = str(earlier / "summary.json")
    finish(out, "rpn/a", 42, box_proposals={"AR@100": 7.0})  # on disk: wins over the summary's 5.0

    fake.calls.clear()
    assert run_ablations.main(["--rows", "rpn/c", "rpn/a", "rpn/b", "--seeds", "2", "--output", str(out),
                               "--known", known]) == 0
    assert fake.seeds() == [42, 1042]  # only row rpn/b, which the summary does not hold
    rows = json.loads((out / "summary.json").read_text())["tables"]["rpn"]["rows"]
    assert rows["rpn/c"]["n"] == 2 and rows["rpn/c"]["mean"]["AR@100"] == pytest.approx(22.0)
    assert {seed: m["AR@100"] for seed, m in rows["rpn/c"]["per_seed"].items()} == {"42": 20.0, "1042": 24.0}
    assert rows["rpn/c"]["seconds"] == {"42": 10.0, "1042": 10.0}
    assert rows["rpn/a"]["per_seed"]["42"]["AR@100"] == 7.0 and rows["rpn/a"]["per_seed"]["1042"]["AR@100"] == 10.42
    assert rows["rpn/b"]["mean"]["AR@100"] == pytest.approx((0.42 + 10.42) / 2)
    assert not (out / "rpn_c").exists()  # nothing trained or written for the recorded seeds
    capsys.readouterr()


def test_fast_row_on_recorded_rpn_c_seed_says_its_proposals_are_missing(tmp_path, caplog, capsys):
    finish(tmp_path / "earlier", "rpn/c", 42, box_proposals={"AR@100": 20.0})
    assert run_ablations.main(["--rows", "rpn/c", "--seeds", "1", "--output", str(tmp_path / "earlier")]) == 0
    assert run_ablations.main(["--rows", "fast/c", "--seeds", "1", "--output", str(tmp_path / "out"),
                               "--known", str(tmp_path / "earlier" / "summary.json")]) == 2
    assert "proposals are not: run this without --known" in caplog.text and "--rows rpn/c" in caplog.text
    capsys.readouterr()


@pytest.mark.parametrize("content, says", [
    (None, "cannot be read"),
    ("{not json", "is not a summary.json this runner wrote"),
    (json.dumps({"tables": {"rpn": {"task": "box_proposals", "rows": {"rpn/z": {}}}}}), "unknown row 'rpn/z'"),
])
def test_bad_known_summary_is_refused(tmp_path, content, says, capsys):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        run_ablations.main(["--rows", "rpn/c", "--output", str(tmp_path / "out"), "--known", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--known {path}" in err and says in err
    assert not (tmp_path / "out").exists()  # refused before anything runs or is written
