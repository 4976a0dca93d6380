#!/usr/bin/env bash
# Start the UC2 container with the data mounted where the configs expect it:
#   /txt (text LMDBs, read-only)  /img (image-feature LMDBs, read-only)
#   /pretrain (XLM-R / UC2 weights, read-only)  /storage (outputs, writable)  /src (this checkout)
# Usage: ./launch_container.sh TXT_DB IMG_DB OUTPUT PRETRAINED [IMAGE]
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: $0 TXT_DB IMG_DB OUTPUT PRETRAINED [IMAGE]" >&2
    exit 2
fi
TXT_DB=$(realpath "$1")
IMG_DB=$(realpath "$2")
OUTPUT=$(realpath -m "$3")
PRETRAINED=$(realpath "$4")
IMAGE=${5:-uc2:latest}
SRC=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$OUTPUT"
GPUS=${CUDA_VISIBLE_DEVICES:-all}

docker run --gpus "\"device=${GPUS}\"" --ipc=host --rm -it \
    --mount "src=${SRC},dst=/src,type=bind" \
    --mount "src=${OUTPUT},dst=/storage,type=bind" \
    --mount "src=${PRETRAINED},dst=/pretrain,type=bind,readonly" \
    --mount "src=${TXT_DB},dst=/txt,type=bind,readonly" \
    --mount "src=${IMG_DB},dst=/img,type=bind,readonly" \
    -w /src "${IMAGE}"
