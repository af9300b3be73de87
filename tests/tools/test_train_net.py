"""The main job at CI size: train, checkpoint, resume, COCO evaluation, DDP on CPU, bad input."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def run(*args, data_root, timeout=600):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def test_train_checkpoint_resume_and_evaluate(tmp_path, data_root):
    out = tmp_path / "run"
    r = run("--config-file", TINY, "OUTPUT_DIR", out, data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint", "config.yaml", "metrics.json"):
        assert (out / name).exists(), name
    assert any(p.startswith("events.out.tfevents") for p in os.listdir(out))
    assert (data_root / "fpn_shapes_tiny_train" / "annotations.json").exists()
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0 <= results["bbox"]["AP"] <= 100  # a number: the evaluator saw detections
    assert (out / "inference" / "fpn_shapes_tiny_val" / "coco_instances_results.json").exists()
    assert max(m["iteration"] for m in metrics(out) if "total_loss" in m) == 3
    assert "eta" in (r.stdout + r.stderr)

    # --resume continues from the last checkpoint (iteration 4) up to the new MAX_ITER.
    r = run("--config-file", TINY, "--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 6, data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Loading from " + str(out / "model_final.pth") in r.stdout + r.stderr
    assert "Starting training from iteration 4" in r.stdout + r.stderr
    assert max(m["iteration"] for m in metrics(out) if "total_loss" in m) == 5

    # --eval-only with the trained weights gives the COCO result keys again.
    r = run("--config-file", TINY, "--eval-only", "OUTPUT_DIR", tmp_path / "eval",
            "MODEL.WEIGHTS", out / "model_final.pth", data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AP" in json.loads((tmp_path / "eval" / "eval_results.json").read_text())["bbox"]


def test_two_process_ddp_on_cpu(tmp_path, data_root):
    out = tmp_path / "ddp"
    r = run("--config-file", TINY, "--num-gpus", 2, "--dist-url", "auto", "OUTPUT_DIR", out,
            "SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()", data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model_final.pth").exists()
    assert "World size: 2" in r.stdout + r.stderr


def test_bad_config_path_and_key_stop_before_any_work(tmp_path, data_root):
    out = tmp_path / "never"
    r = run("--config-file", tmp_path / "missing.yaml", "OUTPUT_DIR", out, data_root=data_root)
    assert r.returncode != 0 and "missing.yaml" in r.stderr
    r = run("--config-file", TINY, "MODEL.NO_SUCH_KEY", 1, "OUTPUT_DIR", out, data_root=data_root)
    assert r.returncode != 0 and "MODEL.NO_SUCH_KEY" in r.stderr
    assert not out.exists()
