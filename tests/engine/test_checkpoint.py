"""Training that survives being killed: atomic checkpoints, resume past a corrupt file, a kill at a
random iteration, a NaN loss, and --eval-only with weights that cannot be read."""
import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from helpers import ROOT
from fpn_plugin.engine.checkpoint import AtomicCheckpointer, UnreadableCheckpointError

TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
FAULTY = os.path.join(ROOT, "tests", "faulty_train_net.py")
# The CI job made faster: images at their generated 64-100 px, a narrower pyramid and box head
# (94 MB checkpoints instead of 226 MB). Six iterations, a checkpoint every two; the lr changes at
# every checkpoint (warmup, then two steps), so a resumed schedule that is off shows.
FAST = ("INPUT.MIN_SIZE_TRAIN", "(0,)", "INPUT.MIN_SIZE_TEST", 0, "MODEL.FPN.OUT_CHANNELS", 64,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 128, "MODEL.META_ARCHITECTURE", "FaultyRCNN",
        "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", "(3, 5)")


# ---------------------------------------------------------------- the checkpointer on its own

def net(seed):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def checkpointer(folder, seed=0):
    """An AtomicCheckpointer of net(seed) and its optimizer, which has momentum after one step."""
    model = net(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: weights stay net(seed)
    model(torch.full((1, 3), seed + 1.0)).sum().backward()  # momentum differs by seed
    opt.step()
    return AtomicCheckpointer(model, str(folder), save_to_disk=True, optimizer=opt)


def save(folder, iteration, seed=None, name=None, mtime=None):
    """Save a checkpoint of iteration ``iteration`` (weights from ``seed``) named model_<it>."""
    ckpt = checkpointer(folder, iteration if seed is None else seed)
    name = name or f"model_{iteration:07d}"
    ckpt.save(name, iteration=iteration)
    path = os.path.join(folder, name + ".pth")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def weight(ckpt):
    return ckpt.model.weight.detach().clone()


def read_last(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def test_saved_files_are_detectron2_checkpoints(tmp_path):
    path = save(tmp_path, 3)
    assert read_last(tmp_path) == "model_0000003.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth"]  # no temporary file left
    stock = DetectionCheckpointer(net(99), str(tmp_path))
    assert stock.resume_or_load("", resume=True)["iteration"] == 3
    assert torch.equal(stock.model.weight, net(3).weight)
    assert torch.load(path, map_location="cpu")["optimizer"]["state"]  # momentum buffers saved


def test_only_the_main_process_writes(tmp_path):
    AtomicCheckpointer(net(0), str(tmp_path), save_to_disk=False).save("model_0000001")
    assert os.listdir(tmp_path) == []


def half_then(fail):
    """A torch.save that writes half of the file, then calls ``fail()``."""
    real_save = torch.save

    def partial_save(obj, f):
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        fail()

    return partial_save


def test_a_save_failing_part_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1)
    ckpt = checkpointer(tmp_path, seed=3)

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then(disk_full))
    with pytest.raises(OSError, match="No space"):
        ckpt.save("model_0000003", iteration=3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert read_last(tmp_path) == "model_0000001.pth"
    assert torch.load(tmp_path / "model_0000001.pth", map_location="cpu")["iteration"] == 1


def _kill_in_save(folder, where):
    """Child process: save iteration 1, then get SIGKILLed while saving iteration 3."""
    save(folder, 1)
    ckpt = checkpointer(folder, seed=3)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if where == "model file":
        torch.save = half_then(die)
    else:  # the model file is in place; the kill comes while last_checkpoint is replaced
        real_replace = os.replace
        os.replace = lambda src, dst: die() if dst.endswith("last_checkpoint") else real_replace(src, dst)
    ckpt.save("model_0000003", iteration=3)


@pytest.mark.parametrize("where", ["model file", "last_checkpoint"])
def test_a_kill_during_a_save_leaves_a_checkpoint_to_resume_from(tmp_path, where):
    child = multiprocessing.get_context("fork").Process(target=_kill_in_save, args=(str(tmp_path), where))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert read_last(tmp_path) == "model_0000001.pth"
    assert torch.load(tmp_path / "model_0000001.pth", map_location="cpu")["iteration"] == 1
    if where == "model file":  # no file under a final name that cannot be read
        assert not (tmp_path / "model_0000003.pth").exists()
        partial = [p for p in os.listdir(tmp_path) if p.startswith(".model_0000003.") and p.endswith(".tmp.pth")]
        assert len(partial) == 1  # the partial write, under its hidden temporary name
    else:  # the new file is complete; last_checkpoint still names the previous one
        assert torch.load(tmp_path / "model_0000003.pth", map_location="cpu")["iteration"] == 3
    ckpt = checkpointer(tmp_path, seed=99)
    assert ckpt.resume_or_load("", resume=True)["iteration"] == 1
    assert ckpt.resumed_from == str(tmp_path / "model_0000001.pth")


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def overwrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


CORRUPTIONS = {
    "truncated": truncate,
    "zero bytes": lambda p: overwrite(p, b""),
    "text": lambda p: overwrite(p, b"not a checkpoint\n"),
    "not a state dict": lambda p: torch.save([1, 2, 3], p),
    "missing": os.remove,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_resume_steps_past_an_unreadable_last_checkpoint(tmp_path, caplog, corruption):
    save(tmp_path, 1, mtime=1_000)
    save(tmp_path, 3, mtime=2_000)
    save(tmp_path, 0, name="model_final", mtime=500)  # an older run's end: not the newest
    bad = save(tmp_path, 5, mtime=3_000)
    CORRUPTIONS[corruption](bad)
    assert read_last(tmp_path) == "model_0000005.pth"
    ckpt = checkpointer(tmp_path, seed=99)
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.engine.checkpoint"):
        extra = ckpt.resume_or_load("", resume=True)
    assert bad in caplog.text and "cannot read" in caplog.text
    assert extra["iteration"] == 3 and ckpt.resumed_from == str(tmp_path / "model_0000003.pth")
    assert torch.equal(weight(ckpt), net(3).weight)


def test_resume_with_an_empty_last_checkpoint_takes_the_newest_file(tmp_path, caplog):
    save(tmp_path, 1, mtime=1_000)
    save(tmp_path, 3, mtime=2_000)
    overwrite(tmp_path / "last_checkpoint", b"")
    ckpt = checkpointer(tmp_path, seed=99)
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.engine.checkpoint"):
        assert ckpt.resume_or_load("", resume=True)["iteration"] == 3
    assert "last_checkpoint names no checkpoint" in caplog.text


def test_resume_with_nothing_readable_starts_from_model_weights(tmp_path, caplog):
    for it in (1, 3):
        truncate(save(tmp_path, it))
    weights = save(tmp_path / "pretrained", 0, seed=7, name="weights")
    ckpt = checkpointer(tmp_path, seed=99)
    momentum = {k: v.clone() for k, v in ckpt.checkpointables["optimizer"].state_dict()["state"][0].items()}
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.engine.checkpoint"):
        ckpt.resume_or_load(weights, resume=True)
    assert "model_0000001.pth" in caplog.text and "model_0000003.pth" in caplog.text
    assert "No readable checkpoint" in caplog.text and weights in caplog.text
    assert ckpt.resumed_from is None
    assert torch.equal(weight(ckpt), net(7).weight)  # the model from MODEL.WEIGHTS ...
    state = ckpt.checkpointables["optimizer"].state_dict()["state"][0]
    assert all(torch.equal(state[k], v) for k, v in momentum.items())  # ... and nothing else

    ckpt = checkpointer(tmp_path, seed=99)
    ckpt.resume_or_load("", resume=True)  # no MODEL.WEIGHTS: from scratch
    assert ckpt.resumed_from is None and torch.equal(weight(ckpt), net(99).weight)


@pytest.mark.parametrize("corruption", ["truncated", "missing", "text"])
def test_unreadable_model_weights_raise_one_error_naming_the_file(tmp_path, corruption):
    bad = save(tmp_path / "w", 0, name="weights")
    CORRUPTIONS[corruption](bad)
    ckpt = checkpointer(tmp_path / "out", seed=99)
    with pytest.raises(UnreadableCheckpointError, match="cannot read checkpoint") as e:
        ckpt.resume_or_load(bad, resume=False)
    assert e.value.path == bad and bad in str(e.value)
    assert torch.equal(weight(ckpt), net(99).weight)  # untouched
    ckpt.resume_or_load("", resume=False)  # the checkpointer is still usable after the failure


# ---------------------------------------------------------------- the trainer, in this process

def test_trainer_iteration_follows_the_checkpoint_it_could_read(tmp_path):
    from fpn_plugin.config import load_config
    from fpn_plugin.engine import Trainer

    cfg = load_config(TINY, ["OUTPUT_DIR", str(tmp_path), *FAST[:8]])
    trainer = Trainer(cfg)
    for it in (1, 3):
        trainer.iter = it
        trainer.checkpointer.save(f"model_{it:07d}")
    truncate(tmp_path / "model_0000003.pth")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2  # iteration 1 finished in model_0000001.pth
    truncate(tmp_path / "model_0000001.pth")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0  # nothing readable: from MODEL.WEIGHTS, from the start


# ---------------------------------------------------------------- train_net.py, killed and resumed

def run(*args, data_root, env=(), script=FAULTY):
    env = {**os.environ, "DETECTRON2_DATASETS": str(data_root), "PYTHONWARNINGS": "ignore",
           **{k: str(v) for k, v in dict(env).items()}}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def lr_by_iteration(out_dir):
    """{iteration: lr} from metrics.json; of rows written twice (before a kill and after the
    resume) the later one."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["iteration"]: r["lr"] for r in rows if "lr" in r}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def test_kill_at_a_random_iteration_then_resume(tmp_path, data_root):
    kill_at = random.Random(16).randint(2, 4)  # after the first checkpoint (iteration 1)
    last_good = 2 * (kill_at // 2) - 1  # the newest checkpoint finished before it: 1 or 3
    out = tmp_path / "killed"
    r = run("--config-file", TINY, "OUTPUT_DIR", out, *FAST, data_root=data_root, env={"FPN_TEST_KILL_AT": kill_at})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert read_last(out) == f"model_{last_good:07d}.pth"
    assert not (out / "model_final.pth").exists()

    r = run("--config-file", TINY, "--resume", "OUTPUT_DIR", out, *FAST, data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f"Loading from {out / f'model_{last_good:07d}.pth'}" in log
    assert f"Starting training from iteration {last_good + 1}" in log
    assert (out / "model_final.pth").exists() and "bbox" in json.loads((out / "eval_results.json").read_text())

    whole = tmp_path / "uninterrupted"
    r = run("--config-file", TINY, "OUTPUT_DIR", whole, *FAST, "DATASETS.TEST", "()", data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = lr_by_iteration(whole)
    assert sorted(expected) == [1, 3, 5] and len(set(expected.values())) == 3  # warmup, step, step
    assert lr_by_iteration(out) == pytest.approx(expected, rel=1e-12)


def test_nan_loss_stops_after_the_last_good_checkpoint(tmp_path, data_root):
    out = tmp_path / "nan"
    r = run("--config-file", TINY, "OUTPUT_DIR", out, *FAST, data_root=data_root, env={"FPN_TEST_NAN_AT": 3})
    assert r.returncode != 0
    assert "FloatingPointError: Loss became infinite or NaN at iteration=3" in r.stderr
    assert read_last(out) == "model_0000001.pth"
    assert not (out / "model_0000003.pth").exists() and not (out / "model_final.pth").exists()
    good = torch.load(out / "model_0000001.pth", map_location="cpu")
    assert good["iteration"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values())


def test_eval_only_with_unreadable_weights_stops_with_one_message(tmp_path, data_root):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"")
    r = run("--config-file", TINY, "--eval-only", "OUTPUT_DIR", tmp_path / "eval", "MODEL.WEIGHTS", bad,
            data_root=data_root, script=os.path.join(ROOT, "train_net.py"))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith(f"train_net.py: cannot read checkpoint {bad}")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "eval" / "eval_results.json").exists()
