#!/usr/bin/env bash
# Make this machine ready for fpn_plugin: torch/torchvision (only if absent), Detectron2 (built
# from source when it does not import), the test and export tools, and the plugin itself.
# Never upgrades an installed torch. Safe to run again: what imports is left alone.
#
#   DETECTRON2_SOURCE=PATH  build Detectron2 from a local copy instead of GitHub: a source
#                           checkout, or a .tar.gz/.tgz/.tar/.zip archive of one
#   PYTHON=INTERPRETER      the Python to set up (default python3)
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore

# The Detectron2 this project is tested with (upstream commit of 2026-06-06). Named only here.
DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_REPO=https://github.com/facebookresearch/detectron2.git
TORCH=2.14.1
TORCHVISION=0.29.1
# timm for the timm bottom-ups (MODEL.FPN_PAPER.BOTTOM_UP: build_timm_backbone); the same pin as
# fpn_plugin/modeling/timm_backbone.py's TIMM_VERSION.
TIMM=1.0.31

PY=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)
start_dir=$PWD
cd "$(dirname "$0")/.."
t_start=$SECONDS

die() {  # die REASON FIX: one line saying what is wrong, one saying what to do; exit status 1
  echo "[setup] error: $1" >&2
  echo "[setup] fix:   $2" >&2
  exit 1
}

work=$(mktemp -d)
ticker=""
cleanup() {
  if [ -n "$ticker" ]; then kill "$ticker" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v "$PY" >/dev/null 2>&1 ||
  die "no Python interpreter '$PY' on PATH" "install Python 3.10 or later, or set PYTHON=/path/to/python"

# --- torch and torchvision: installed only when no torch is ---------------------------------
installed_torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -z "$installed_torch" ]; then
  echo "[setup] installing torch==$TORCH torchvision==$TORCHVISION (about 80 s on a first run)"
  "$PY" -m pip install "${quiet[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
  installed_torch=$TORCH
fi
# A torchvision built for another torch fails at import or when its compiled ops first run.
if ! "$PY" -c 'import torch, torchvision; torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)' >/dev/null 2>&1; then
  die "torch $installed_torch is installed but no torchvision built for it imports" \
      "$PY -m pip install 'torch==$installed_torch' torchvision   (pip picks the matching torchvision; for torch $TORCH it is $TORCHVISION)"
fi
# Every later install is held to the installed torch, so nothing can move it.
constraints=$work/constraints.txt
echo "torch==$installed_torch" > "$constraints"
# torch needs setuptools>=77.0.3; Detectron2's model_zoo imports pkg_resources, gone in 81.
"$PY" -m pip install "${quiet[@]}" -c "$constraints" "setuptools>=77.0.3,<81"

# --- Detectron2: built from source when it does not import ----------------------------------
detectron2_works() { "$PY" -c 'import detectron2, detectron2._C' >/dev/null 2>&1; }

remove_partial_detectron2() {  # a failed build must leave nothing that imports
  if "$PY" -c 'import detectron2' >/dev/null 2>&1; then
    echo "[setup] removing the partly installed detectron2" >&2
    "$PY" -m pip uninstall -y --disable-pip-version-check detectron2 >&2 || true
  fi
}

unpack() {  # unpack ARCHIVE FOLDER
  mkdir -p "$2"
  case $1 in
    *.tar.gz | *.tgz | *.tar | *.tar.bz2 | *.tar.xz) tar -xf "$1" -C "$2" ;;
    *.zip) if command -v unzip >/dev/null 2>&1; then unzip -q "$1" -d "$2"; else "$PY" -m zipfile -e "$1" "$2"; fi ;;
    *) return 3 ;;
  esac
}

archive_url=https://github.com/facebookresearch/detectron2/archive/$DETECTRON2_COMMIT.tar.gz
source_fix="point DETECTRON2_SOURCE at a Detectron2 checkout or archive (e.g. $archive_url), or unset it to build from GitHub"

install_detectron2() {
  local target shown src status reason byhand t0
  # 1. What to build: a local copy, or the pinned upstream commit.
  if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    src=$DETECTRON2_SOURCE
    case $src in /*) ;; *) src=$start_dir/$src ;; esac
    [ -e "$src" ] || die "DETECTRON2_SOURCE=$DETECTRON2_SOURCE does not exist" "$source_fix"
    shown=$src
    if [ -f "$src" ]; then
      status=0
      unpack "$src" "$work/source" >/dev/null 2>&1 || status=$?
      [ "$status" -ne 3 ] || die "DETECTRON2_SOURCE=$DETECTRON2_SOURCE is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive" "$source_fix"
      [ "$status" -eq 0 ] || die "DETECTRON2_SOURCE=$DETECTRON2_SOURCE cannot be unpacked (a damaged or partial download?)" "$source_fix"
      src=$work/source
      if [ ! -f "$src/setup.py" ]; then  # archives from GitHub hold one top folder
        local tops=("$src"/*/)
        [ "${#tops[@]}" -ne 1 ] || src=${tops[0]%/}
      fi
    fi
    [ -f "$src/setup.py" ] && [ -f "$src/detectron2/__init__.py" ] ||
      die "DETECTRON2_SOURCE=$DETECTRON2_SOURCE is not a Detectron2 source tree (no setup.py and detectron2/ at its top)" "$source_fix"
    target=$src
  else
    command -v git >/dev/null 2>&1 ||
      die "git is not installed, and pip needs it to fetch Detectron2 from GitHub" \
          "install git (Debian/Ubuntu: apt-get install -y git), or set DETECTRON2_SOURCE to a download of $archive_url"
    target="git+$DETECTRON2_REPO@$DETECTRON2_COMMIT"
    shown=$target
  fi
  # 2. Detectron2's ops are C++: without a compiler the build can only fail, minutes later.
  if [ -n "${CXX:-}" ]; then
    command -v "$CXX" >/dev/null 2>&1 ||
      die "the C++ compiler named by CXX=$CXX is not found" "install it, or unset CXX to use c++/g++ from PATH"
  elif ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    die "no C++ compiler (c++ or g++) on PATH, and Detectron2's ops are compiled from source" \
        "install one (Debian/Ubuntu: apt-get install -y g++) or set CXX to yours, then run this script again"
  fi
  # 3. Build against the installed torch: no build isolation, not editable, torch held.
  byhand="$PY -m pip install --no-build-isolation '$shown' 'torch==$installed_torch'"
  echo "[setup] Detectron2 does not import: building it from $shown against torch $installed_torch"
  echo "[setup] this compiles its C++ ops: about 2.5 min on a 2-core machine"
  t0=$SECONDS
  (
    nap=""
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 30 </dev/null >/dev/null 2>&1 &
      nap=$!
      wait "$nap"
      echo "[setup] ... building Detectron2, $((SECONDS - t0)) s"
    done
  ) &
  ticker=$!
  status=0
  "$PY" -m pip install --disable-pip-version-check --no-build-isolation -c "$constraints" "$target" 2>&1 |
    tee "$work/build.log" || status=${PIPESTATUS[0]}
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  ticker=""
  if [ "$status" -ne 0 ]; then
    reason=$(grep -E 'fatal error|fatal:|[Ee]rror: ' "$work/build.log" |
      grep -vE 'subprocess-exited-with-error|Failed building wheel|metadata-generation-failed' |
      head -n 1 | sed -e 's/^[[:space:]]*//' | cut -c1-200) || true
    remove_partial_detectron2
    die "building Detectron2 failed after $((SECONDS - t0)) s (pip exit status $status): ${reason:-see the pip output above}" \
        "fix that cause, then run by hand: $byhand"
  fi
  if ! detectron2_works; then
    remove_partial_detectron2
    die "Detectron2 was built but does not import (import detectron2._C fails: built against another torch?)" \
        "run by hand: $byhand"
  fi
  echo "[setup] Detectron2 built and installed in $((SECONDS - t0)) s"
}

if detectron2_works; then
  echo "[setup] Detectron2 imports: nothing to build"
else
  install_detectron2
fi

# --- shapely (cropping polygon masks), timm (held to the installed torch), the tools the tests
# and exports use, and the plugin ---
"$PY" -m pip install "${quiet[@]}" -c "$constraints" shapely "timm==$TIMM" pytest hypothesis opencv-python-headless onnx onnxruntime
"$PY" -m pip install "${quiet[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
"$PY" -m pip install "${quiet[@]}" -c "$constraints" "setuptools>=77.0.3,<81"  # re-pin if moved
echo "[setup] ready in $((SECONDS - t_start)) s: torch $installed_torch, $("$PY" -c 'import detectron2; print("detectron2", detectron2.__version__)')"
