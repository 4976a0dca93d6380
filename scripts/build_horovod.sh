#!/usr/bin/env bash
# Build horovod (default 0.28.1) from its PyPI source distribution against the torch already installed in
# the current Python environment, with NCCL for GPU collectives.
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
#
# Usage:  PYTHON=.venv/bin/python scripts/build_horovod.sh
# Environment: HOROVOD_VERSION (0.28.1), PYTHON (python3), HOROVOD_NCCL_HOME / HOROVOD_CUDA_HOME if NCCL or
# CUDA live outside the default search paths. Needs cmake >= 3.13, a C++17 compiler and the CUDA toolkit.
set -euo pipefail

HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
PYTHON="${PYTHON:-python3}"

for tool in cmake g++; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build_horovod.sh: '$tool' not found; install it first (cmake: '$PYTHON -m pip install cmake')" >&2
        exit 1
    fi
done
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "build_horovod.sh: '$PYTHON' cannot import torch; install torch first (see requirements.txt)" >&2
    exit 1
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

"$PYTHON" -m pip download --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d "$workdir"
tar -xzf "$workdir/horovod-${HOROVOD_VERSION}.tar.gz" -C "$workdir"
src="$workdir/horovod-${HOROVOD_VERSION}"

# C++17 instead of C++14 wherever the CMake files pin the standard (top level and horovod/torch).
patched=0
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

export HOROVOD_WITH_PYTORCH=1
export HOROVOD_GPU_OPERATIONS=NCCL
export HOROVOD_WITH_GLOO=1            # horovodrun works without MPI
export HOROVOD_WITHOUT_TENSORFLOW=1
export HOROVOD_WITHOUT_MXNET=1
export CXXFLAGS="-std=c++17 ${CXXFLAGS:-}"

"$PYTHON" -m pip install --no-build-isolation --no-cache-dir --no-deps "$src"
"$PYTHON" -m pip install cloudpickle psutil pyyaml packaging  # horovod's runtime dependencies

# Prove the build: the torch extension loads and NCCL was compiled in.
"$PYTHON" - <<'PY'
import horovod.torch as hvd

hvd.init()
print(f"horovod {hvd.__version__}: size {hvd.size()}, NCCL built: {bool(hvd.nccl_built())}")
if not hvd.nccl_built():
    raise SystemExit("horovod was built without NCCL (is the CUDA toolkit / NCCL visible?)")
PY
