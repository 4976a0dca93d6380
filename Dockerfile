# UC2 training image: official PyTorch CUDA base, project requirements, horovod with NCCL.
# Build:  docker build -t uc2:latest .        Run:  ./launch_container.sh TXT_DB IMG_DB OUTPUT PRETRAINED
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.* cmake=3.* g++=4:* make=4.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.txt scripts/build_horovod.sh /tmp/uc2/
# torch comes from the base image; everything else from requirements.txt (the torch pin line is skipped
# so the base image's CUDA build is kept).
RUN grep -v '^torch==' /tmp/uc2/requirements.txt > /tmp/uc2/requirements.notorch.txt \
    && pip install --no-cache-dir -r /tmp/uc2/requirements.notorch.txt \
    && bash /tmp/uc2/build_horovod.sh

CMD ["bash"]
