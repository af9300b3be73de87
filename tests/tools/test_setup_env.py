"""tools/setup_env.sh's decisions, run against a stand-in interpreter that answers the import
checks as each test tells it and records every pip call, so nothing is installed or built."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "tools", "setup_env.sh")

# The stand-in for python. State lives in files under $FAKE_STATE: "d2" = Detectron2 installed and
# working, "d2_partial" = `import detectron2` works but its compiled ops do not.
FAKE_PYTHON = r'''#!{python}
import json, os, sys
state = os.environ["FAKE_STATE"]
has = lambda name: os.path.exists(os.path.join(state, name))
def mark(name, on=True):
    path = os.path.join(state, name)
    if on:
        open(path, "w").close()
    elif os.path.exists(path):
        os.remove(path)
args = sys.argv[1:]
if args[:1] == ["-c"]:
    code = args[1]
    if "detectron2" in code:
        ok = has("d2") if "_C" in code else (has("d2") or has("d2_partial"))
        if ok and "print" in code:
            print("detectron2 0.6")
        sys.exit(0 if ok else 1)
    if "torchvision" in code:
        sys.exit(0 if os.environ.get("FAKE_TORCHVISION", "1") == "1" else 1)
    if "import torch" in code:
        if not os.environ.get("FAKE_TORCH"):
            sys.exit(1)
        print(os.environ["FAKE_TORCH"])
        sys.exit(0)
    sys.exit(0)
if args[:2] == ["-m", "pip"]:
    record = {"args": args[2:]}
    if "-c" in args:
        with open(args[args.index("-c") + 1]) as f:
            record["constraints"] = f.read().strip()
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if args[2] == "uninstall":
        mark("d2", False)
        mark("d2_partial", False)
    elif "--no-build-isolation" in args and "-e" not in args:  # the Detectron2 build
        build = os.environ.get("FAKE_BUILD", "ok")
        if build == "ok":
            mark("d2")
            print("Successfully installed detectron2-0.6")
            sys.exit(0)
        print("  detectron2/layers/csrc/vision.cpp:3:10: fatal error: Python.h: No such file or directory")
        print("error: subprocess-exited-with-error")
        if build == "fail_partial":
            mark("d2_partial")
        sys.exit(1)
    sys.exit(0)
sys.exit(0)
'''


@pytest.fixture
def fake(tmp_path):
    """run(env overrides, d2_installed=False, path=None) -> (CompletedProcess, pip calls)."""
    state = tmp_path / "state"
    state.mkdir()
    python = tmp_path / "fakepython"
    python.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    python.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def run(env=(), d2_installed=False, path=None):
        if d2_installed:
            (state / "d2").touch()
        full = {k: v for k, v in os.environ.items() if k not in ("DETECTRON2_SOURCE", "CXX")}
        full.update(PYTHON=str(python), FAKE_STATE=str(state), FAKE_TORCH="2.14.1", TMPDIR=str(scratch))
        if path is not None:
            full["PATH"] = path
        full.update(dict(env))
        proc = subprocess.run(["/bin/bash", SCRIPT], env=full, cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=60)
        log = state / "calls.jsonl"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return proc, calls

    run.state = state
    run.scratch = scratch
    return run


def builds(calls):
    """The pip calls that would build Detectron2."""
    return [c["args"] for c in calls if "--no-build-isolation" in c["args"] and "-e" not in c["args"]]


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("[setup] ")]


def fake_source(root, name="detectron2-src"):
    src = root / name
    (src / "detectron2").mkdir(parents=True)
    (src / "setup.py").write_text("")
    (src / "detectron2" / "__init__.py").write_text("")
    return src


def test_installed_detectron2_is_not_built_again(fake):
    proc, calls = fake(d2_installed=True)
    assert proc.returncode == 0, proc.stderr
    assert builds(calls) == []
    assert "nothing to build" in proc.stdout and "ready" in proc.stdout
    # the plugin itself is installed, held to the installed torch
    plugin = [c for c in calls if "-e" in c["args"]]
    assert len(plugin) == 1 and plugin[0]["constraints"] == "torch==2.14.1"
    assert not os.listdir(fake.scratch)  # its temporary folder is gone


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "damaged_archive", "not_an_archive"])
def test_bad_detectron2_source_stops_with_reason_and_fix(fake, tmp_path, kind):
    source = tmp_path / {"missing": "nope", "empty_dir": "emptydir", "damaged_archive": "d2.tar.gz",
                         "not_an_archive": "d2.txt"}[kind]
    if kind == "empty_dir":
        source.mkdir()
    elif kind != "missing":
        source.write_bytes(b"\x1f\x8b not really gzip")
    proc, calls = fake({"DETECTRON2_SOURCE": str(source)})
    assert proc.returncode != 0
    assert builds(calls) == []
    error, fix = error_lines(proc)  # one line of reason, one of fix
    expected = {"missing": "does not exist", "empty_dir": "is not a Detectron2 source tree",
                "damaged_archive": "cannot be unpacked", "not_an_archive": "neither a folder nor"}[kind]
    assert error.startswith("[setup] error: ") and str(source) in error and expected in error
    assert fix.startswith("[setup] fix: ") and "DETECTRON2_SOURCE" in fix


def test_relative_detectron2_source_is_read_from_the_callers_folder(fake, tmp_path):
    fake_source(tmp_path)
    proc, calls = fake({"DETECTRON2_SOURCE": "detectron2-src"})
    assert proc.returncode == 0, proc.stderr
    assert builds(calls)[0][-1] == str(tmp_path / "detectron2-src")


def test_archive_source_is_unpacked_and_built_against_the_installed_torch(fake, tmp_path):
    src = fake_source(tmp_path, "detectron2-0123abc")
    archive = tmp_path / "d2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    shutil.rmtree(src)
    proc, calls = fake({"DETECTRON2_SOURCE": str(archive), "FAKE_TORCH": "2.13.0"})
    assert proc.returncode == 0, proc.stderr
    (args,) = builds(calls)
    assert args[0] == "install" and "-q" not in args  # pip's progress is shown
    assert args[-1].endswith("/detectron2-0123abc")  # the archive's top folder
    build = [c for c in calls if c["args"] == args][0]
    assert build["constraints"] == "torch==2.13.0"
    assert re.search(r"built and installed in \d+ s", proc.stdout)
    assert not os.listdir(fake.scratch)  # the unpacked copy is removed


def test_upstream_build_uses_the_pinned_commit_named_in_the_install_docs(fake):
    proc, calls = fake()
    assert proc.returncode == 0, proc.stderr
    (args,) = builds(calls)
    match = re.fullmatch(r"git\+https://github\.com/facebookresearch/detectron2\.git@([0-9a-f]{40})", args[-1])
    assert match, args
    with open(os.path.join(ROOT, "docs", "install.md")) as f:
        assert match.group(1) in f.read()
    with open(SCRIPT) as f:
        assert f.read().count(match.group(1)) == 1  # named in one place


def test_failed_build_leaves_nothing_importable(fake, tmp_path):
    proc, calls = fake({"DETECTRON2_SOURCE": str(fake_source(tmp_path)), "FAKE_BUILD": "fail_partial"})
    assert proc.returncode != 0
    assert any(c["args"][:3] == ["uninstall", "-y", "--disable-pip-version-check"] for c in calls)
    assert not (fake.state / "d2_partial").exists() and not (fake.state / "d2").exists()
    error, fix = error_lines(proc)[-2:]
    assert "building Detectron2 failed" in error and "fatal error: Python.h" in error
    assert "run by hand:" in fix and "--no-build-isolation" in fix and str(tmp_path / "detectron2-src") in fix
    # nothing after the failed build ran: the plugin was not installed
    assert not [c for c in calls if "-e" in c["args"]]


def test_clean_build_failure_uninstalls_nothing(fake, tmp_path):
    proc, calls = fake({"DETECTRON2_SOURCE": str(fake_source(tmp_path)), "FAKE_BUILD": "fail"})
    assert proc.returncode != 0 and "run by hand:" in proc.stderr
    assert not [c for c in calls if c["args"][0] == "uninstall"]


def _path_without(tmp_path, missing):
    """A PATH holding the commands the script uses, less those in ``missing``."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("dirname", "mktemp", "rm", "mkdir", "tar", "grep", "sed", "head", "cut", "tee", "sleep",
                 "git", "c++", "g++"):
        found = shutil.which(name)
        if name not in missing and found:
            os.symlink(found, tools / name)
    return str(tools)


def test_no_compiler_stops_before_building(fake, tmp_path):
    proc, calls = fake(path=_path_without(tmp_path, {"c++", "g++"}))
    assert proc.returncode != 0 and builds(calls) == []
    error, fix = error_lines(proc)
    assert "no C++ compiler" in error and "g++" in fix
    proc, calls = fake({"CXX": str(tmp_path / "no-such-compiler")})
    assert proc.returncode != 0 and builds(calls) == []
    error, fix = error_lines(proc)
    assert "CXX=" in error and "no-such-compiler" in error


def test_no_git_for_the_upstream_route_says_to_use_a_local_source(fake, tmp_path):
    proc, calls = fake(path=_path_without(tmp_path, {"git"}))
    assert proc.returncode != 0 and builds(calls) == []
    error, fix = error_lines(proc)
    assert "git is not installed" in error and "DETECTRON2_SOURCE" in fix


def test_torch_without_a_matching_torchvision(fake):
    proc, calls = fake({"FAKE_TORCHVISION": "0"}, d2_installed=True)
    assert proc.returncode != 0
    error, fix = error_lines(proc)
    assert "torchvision" in error and "2.14.1" in error
    assert "pip install 'torch==2.14.1' torchvision" in fix
    assert calls == []  # stopped before installing anything
