#!/usr/bin/env bash
# Build horovod (default 0.28.1) from its PyPI source distribution into a wheel, against the torch already
# installed in the target Python environment, cache the wheel outside the checkout, and install it.
#
# Horovod is optional for UC2: utils/distributed.py uses it only when horovodrun started the job;
# torchrun + torch.distributed covers the same ground without it.
#
# Why a script and not `pip install horovod`:
#   * horovod 0.28.1 compiles its torch extension as C++14 (CMAKE_CXX_STANDARD 14 in its CMakeLists.txt),
#     but torch >= 2.1 headers require C++17 ("#error You need C++17 to compile PyTorch"; horovod issues
#     #3996/#4014, fixed upstream after 0.28.1 by PR #3998). We patch every CXX_STANDARD 14 to 17 in the
#     unpacked source and pass -std=c++17 as well.
#   * pip's build isolation would build against a freshly downloaded torch instead of ours, so the wheel
#     would not load; --no-build-isolation builds against the installed one.
#   * The compile takes minutes (~6 min on 2 cores), so the wheel is cached under
#     $UC2_CACHE/horovod/<key>/, keyed by horovod, torch and Python versions and CPU/NCCL; a later run
#     (CI, a fresh venv) reuses it and only installs.
#
# Usage:  PYTHON=.venv/bin/python scripts/build_horovod.sh
# Environment:
#   HOROVOD_VERSION   horovod release (0.28.1)
#   PYTHON            interpreter whose environment gets horovod (python3)
#   UC2_CACHE         cache root (~/.cache/uc2)
#   UC2_HOROVOD_GPU   "nccl" builds NCCL GPU collectives (needs the CUDA toolkit and NCCL), "cpu" builds
#                     CPU/gloo only; default: nccl when the installed torch is a CUDA build, else cpu
#                     (a CPU torch cannot use NCCL, whatever toolkit is on PATH).
#   HOROVOD_NCCL_HOME / HOROVOD_CUDA_HOME  where NCCL / CUDA live if outside the default search paths.
# Needs cmake >= 3.13 and a C++17 compiler. The wheel is installed only after it has loaded and run
# hvd.init() from a scratch directory, so a broken build never lands in the environment.
set -euo pipefail

HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
PYTHON="${PYTHON:-python3}"
# Absolute (the check runs from a scratch directory), without resolving the venv's symlink to its base python.
case "$PYTHON" in
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;
    *) PYTHON="$(command -v "$PYTHON")" ;;
esac
UC2_CACHE="${UC2_CACHE:-$HOME/.cache/uc2}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "build_horovod.sh: '$PYTHON' cannot import torch; install torch first (see requirements.txt)" >&2
    exit 1
fi
if [ -z "${UC2_HOROVOD_GPU:-}" ]; then
    UC2_HOROVOD_GPU="$("$PYTHON" -c 'import torch; print("nccl" if torch.version.cuda else "cpu")')"
fi
case "$UC2_HOROVOD_GPU" in
    cpu|nccl) ;;
    *) echo "build_horovod.sh: UC2_HOROVOD_GPU must be 'cpu' or 'nccl', got '$UC2_HOROVOD_GPU'" >&2; exit 1 ;;
esac
key="$("$PYTHON" -c 'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')"
cache_dir="$UC2_CACHE/horovod/${HOROVOD_VERSION}-${key}-${UC2_HOROVOD_GPU}"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

build_wheel() {
    for tool in cmake g++; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "build_horovod.sh: '$tool' not found; install it first (cmake: '$PYTHON -m pip install cmake')" >&2
            exit 1
        fi
    done
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d "$workdir"
    tar -xzf "$workdir/horovod-${HOROVOD_VERSION}.tar.gz" -C "$workdir"
    local src="$workdir/horovod-${HOROVOD_VERSION}"
    patch_cxx_standard "$src"

    export HOROVOD_WITH_PYTORCH=1
    export HOROVOD_WITH_GLOO=1            # horovodrun works without MPI
    export HOROVOD_WITHOUT_MPI=1
    export HOROVOD_WITHOUT_TENSORFLOW=1
    export HOROVOD_WITHOUT_MXNET=1
    if [ "$UC2_HOROVOD_GPU" = nccl ]; then export HOROVOD_GPU_OPERATIONS=NCCL; else unset HOROVOD_GPU_OPERATIONS; fi
    export CXXFLAGS="-std=c++17 ${CXXFLAGS:-}"
    MAKEFLAGS="-j$(nproc)"
    export MAKEFLAGS

    "$PYTHON" -m pip wheel --no-build-isolation --no-cache-dir --no-deps -w "$workdir/wheel" "$src"
    # Publish the wheel with one rename, so a concurrent or interrupted build never leaves half a cache entry.
    mkdir -p "$(dirname "$cache_dir")"
    local staged="$cache_dir.tmp.$$"
    mkdir -p "$staged" && cp "$workdir"/wheel/horovod-*.whl "$staged/"
    rm -rf "$cache_dir" && mv "$staged" "$cache_dir"
}

patch_cxx_standard() {
    # C++17 instead of C++14 wherever the CMake files pin the standard (top level and horovod/torch).
    local src="$1" patched=0
    while IFS= read -r -d '' cmake_file; do
        if grep -qE 'CXX_STANDARD[[:space:]]+14' "$cmake_file"; then
            sed -i -E 's/(CXX_STANDARD[[:space:]]+)14/\117/' "$cmake_file"
            echo "patched C++ standard to 17 in ${cmake_file#"$src"/}"
            patched=$((patched + 1))
        fi
    done < <(find "$src" -name CMakeLists.txt -print0)
    if [ "$patched" -eq 0 ]; then
        echo "build_horovod.sh: no 'CXX_STANDARD 14' found; the source layout changed, check it by hand" >&2
    fi
}

# Prove a wheel: import the torch extension from a scratch install and run a one-process init.
check_wheel() {
    local target="$workdir/check"
    "$PYTHON" -m pip install -q --no-deps --target "$target" "$1"
    (cd "$workdir" && PYTHONPATH="$target" UC2_HOROVOD_GPU="$UC2_HOROVOD_GPU" "$PYTHON" - <<'PY'
import os

import horovod
import horovod.torch as hvd

hvd.init()
print(f"horovod {horovod.__version__}: size {hvd.size()}, gloo built: {bool(hvd.gloo_built())}, "
      f"NCCL built: {bool(hvd.nccl_built())}")
if not hvd.gloo_built():
    raise SystemExit("horovod was built without gloo: horovodrun could not start a job without MPI")
if os.environ["UC2_HOROVOD_GPU"] == "nccl" and not hvd.nccl_built():
    raise SystemExit("horovod was built without NCCL (is the CUDA toolkit / NCCL visible?)")
PY
    )
}

if compgen -G "$cache_dir/horovod-*.whl" >/dev/null; then
    echo "build_horovod.sh: reusing cached wheel in $cache_dir"
else
    echo "build_horovod.sh: building horovod $HOROVOD_VERSION ($UC2_HOROVOD_GPU) into $cache_dir"
    build_wheel
fi
wheel="$(compgen -G "$cache_dir/horovod-*.whl" | head -n 1)"
# horovod's runtime dependencies, then the wheel itself once it has proven it loads.
"$PYTHON" -m pip install -q cloudpickle psutil pyyaml packaging
check_wheel "$wheel"
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$wheel"
echo "build_horovod.sh: installed $wheel"
