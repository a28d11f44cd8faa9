# GPU serving image: NVIDIA's Triton (native onnxruntime + TensorRT backends) + twelve-in-one.
#
# NEVER BUILT: the machines this project is developed on have no Docker engine.  Every project step
# below has been run there in another form (see model_repository/README.md, "Docker"); the NGC base
# image, the deadsnakes Python 3.11 install and Triton's GPU backends have not.
#
#   docker build -t twelve-in-one:gpu .
#   docker run --gpus all -p 8080:8080 -v $PWD/runs:/opt/twelve-in-one/runs twelve-in-one:gpu
#
# Triton 2.51.0, the version the nvidia-pytriton wheel bundles for the CPU machines.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# The project pins Python 3.11; the image's own python3 is 3.10.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common make \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/twelve-in-one
COPY . .
# The project's own install (creates .venv with pyproject's pins, onnxruntime-gpu included).
RUN make env PYTHON=python3.11

# Which rendering to serve: onnxruntime (default) or tensorrt; fp32 or fp16.
ENV CHECKPOINT=runs/demo/checkpoint \
    TRITON_BACKEND=onnxruntime \
    PRECISION=fp32 \
    REPOSITORY=model_repository

# At start (a GPU is visible only then): render and gate the repository unless one is mounted, start
# Triton through the project's launcher (127.0.0.1 only, model control none, waits for every model),
# then the gateway in front of it.
CMD ["bash", "-c", "set -e; \
  test -f \"$REPOSITORY/export.json\" || .venv/bin/python -m export --checkpoint \"$CHECKPOINT\" \
     --out \"$REPOSITORY\" --backend \"$TRITON_BACKEND\" --precision \"$PRECISION\" --skip-metric; \
  .venv/bin/python -m export.triton_server --repository \"$REPOSITORY\" \
     --tritonserver /opt/tritonserver/bin/tritonserver --backend-directory /opt/tritonserver/backends & \
  exec .venv/bin/python -m server --backend triton --host 0.0.0.0 --port 8080"]
