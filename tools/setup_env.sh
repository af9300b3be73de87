#!/usr/bin/env bash
# Make this machine ready for fpn_plugin: torch/torchvision (only if absent), the plugin itself,
# and a check that Detectron2 imports. Never upgrades an installed torch. Safe to run again.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=2.14.1
TORCHVISION=0.29.1
quiet=(-q --disable-pip-version-check)

installed_torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -z "$installed_torch" ]; then
  echo "[setup] installing torch==$TORCH torchvision==$TORCHVISION"
  "$PY" -m pip install "${quiet[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
  installed_torch=$TORCH
elif ! "$PY" -c 'import torchvision' 2>/dev/null; then
  echo "[setup] torch $installed_torch is installed but torchvision does not import;" >&2
  echo "        install the torchvision release built for torch $installed_torch (for torch $TORCH: torchvision==$TORCHVISION)." >&2
  exit 1
fi
# Every later install is held to the installed torch, so nothing can move it.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$installed_torch" > "$constraints"
# torch needs setuptools>=77.0.3; Detectron2's model_zoo imports pkg_resources, gone in 81.
"$PY" -m pip install "${quiet[@]}" -c "$constraints" "setuptools>=77.0.3,<81"

if ! "$PY" -c 'import detectron2, detectron2._C' 2>/dev/null; then
  cat >&2 <<'MSG'
[setup] Detectron2 is not installed (or its compiled ops do not load): `import detectron2` failed.
        Detectron2 is not on PyPI. Install it from its repository against the torch above, e.g.
            python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
        (see README.md, "Installing Detectron2"), then run this command again.
MSG
  exit 1
fi
"$PY" -m pip install "${quiet[@]}" -c "$constraints" pytest hypothesis opencv-python-headless onnx onnxruntime
"$PY" -m pip install "${quiet[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
"$PY" -m pip install "${quiet[@]}" -c "$constraints" "setuptools>=77.0.3,<81"  # re-pin if moved
echo "[setup] ready: torch $installed_torch, $("$PY" -c 'import detectron2; print("detectron2", detectron2.__version__)')"
