# GPU serving image: NVIDIA's Triton (native onnxruntime + TensorRT backends) + twelve-in-one, started
# by docker/start.sh (the same script as Dockerfile.cpu, with the NGC image's tritonserver).
#
# NEVER BUILT: no Docker engine exists on the machines this project is developed on.  What is tested
# there instead, outside Docker (tests/test_container.py): docker/start.sh with Dockerfile.cpu's
# environment on a tiny model (export, Triton through the project launcher, a ready gateway answering
# /vqa, SIGTERM stopping both), and static checks on this file (ENV paths = what `make serve` writes,
# the Triton URL = the launcher's HTTP port the gateway's client speaks, TensorRT installed since it is
# offered).  `python -m export --backend onnxruntime` (this image's default rendering) runs on the CPU
# machines too; the launcher's --tritonserver/--backend-directory path has run there with the wheel's
# binary.  Never run: this NGC base image, deadsnakes' Python 3.11 in it, Triton's GPU backends, and
# the TensorRT export (it needs CUDA).
#
#   docker build -t twelve-in-one:gpu .
#   make serve   # once, on the host: builds runs/demo/model and artifacts/ (or TWELVE_BUILD_DEMO=1)
#   docker run --gpus all --rm -p 8000:8000 -v $PWD/runs:/opt/twelve-in-one/runs \
#       -v $PWD/artifacts:/opt/twelve-in-one/artifacts [-e TWELVE_EXPORT_BACKEND=tensorrt] twelve-in-one:gpu
#   docker stop -t 45 ...   # the gateway drains up to TWELVE_DEADLINE_S + 5 s before Triton stops
#
# Triton 2.51.0, the version the nvidia-pytriton wheel bundles for the CPU machines.  TensorRT engines
# load only in the TensorRT version that built them, so TENSORRT_VERSION must be the TensorRT of
# TRITON_IMAGE (NGC's "Frameworks Support Matrix" lists it per release; 10.5.0 for 24.10 as we read it,
# not checked against an engine load here); `tensorrt-cu12==10.5.0` is on PyPI.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
ARG TENSORRT_VERSION=10.5.0

# The project pins Python 3.11; the image's own python3 is 3.10.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/twelve-in-one
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . .
# The project (pyproject's pins: CUDA torch, onnxruntime-gpu) and TensorRT's Python package for
# `python -m export --backend tensorrt` (export/tensorrt.py builds the engines at container start).
RUN python3.11 -m venv .venv \
    && .venv/bin/pip install -e . "tensorrt-cu12==${TENSORRT_VERSION}" \
    && .venv/bin/python -c "import tensorrt; print('tensorrt', tensorrt.__version__)"

# docker/start.sh's settings (the full list is at its top).  Paths are those `make serve` writes
# (bootstrap/layout.py), relative to WORKDIR.  Rendering: onnxruntime (default) or tensorrt; fp32 or
# fp16.  Triton listens on 127.0.0.1 only; the gateway's tritonclient speaks HTTP, so
# TWELVE_TRITON_URL is 127.0.0.1:TWELVE_TRITON_HTTP_PORT (set by start.sh).
ENV OMP_WAIT_POLICY=PASSIVE \
    TWELVE_CHECKPOINT=runs/demo/model \
    TWELVE_DETECTOR_WEIGHTS=artifacts/detector/synthetic-detector.safetensors \
    TWELVE_MODEL_REPOSITORY=model_repository \
    TWELVE_EXAMPLES_DIR=artifacts/examples \
    TWELVE_CACHE_DIR=artifacts/region-cache \
    TWELVE_DATA_DIR=artifacts/galleries \
    TWELVE_EXPORT_BACKEND=onnxruntime \
    TWELVE_EXPORT_PRECISION=fp32 \
    TWELVE_HOST=0.0.0.0 \
    TWELVE_PORT=8000 \
    TWELVE_TRITON_HTTP_PORT=8010 \
    TWELVE_TRITON_GRPC_PORT=8011 \
    TWELVE_TRITON_METRICS_PORT=8012 \
    TWELVE_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    TWELVE_TRITON_BACKEND_DIRECTORY=/opt/tritonserver/backends \
    TWELVE_WORKERS=4 \
    TWELVE_BUILD_DEMO=0

EXPOSE 8000
STOPSIGNAL SIGTERM
# The NGC image's entrypoint (/opt/nvidia/nvidia_entrypoint.sh) execs this.
CMD ["docker/start.sh"]
