# syntax=docker/dockerfile:1
#
# kembed: one image for the predictor, the transformer and the eventing service.
#
#   CPU (default): docker build -t ghcr.io/kembed/kembed:0.1.0 .
#   CUDA:          docker build -t ghcr.io/kembed/kembed:0.1.0-cu128 \
#                    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   Extra model:   docker build --build-arg MODEL_SRC=path/to/model/in/context -t ... .
#                  (copied to /models; without it the bundled model is; either way with its OpenVINO IR)
#
# A container picks its service with `command: ["kembed-predictor"]`, `["kembed-transformer"]` or
# `["kembed-eventing"]` plus args; with no command the image runs the predictor.
#
# The CUDA torch wheels carry their own CUDA runtime libraries, so the CUDA variant needs only the host
# driver (NVIDIA container toolkit / device plugin), not a CUDA base image. BASE_IMAGE may be swapped
# for another image with CPython 3.11 at /usr/local/bin (the venv built here points at it).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder

# PyPI's default Linux torch wheel is the CUDA build (gigabytes): scripts/install.sh adds PyTorch's CPU
# index, so the CPU wheel wins. Same pin and index as `make setup` (Makefile, scripts/install.sh).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=26.3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir "pip==${PIP_VERSION}"

# The same install steps as `make setup`. Torch alone first: the biggest layer, cached until
# TORCH_SPEC or the script changes; the second call finds it satisfied and installs the package.
COPY scripts/install.sh scripts/install.sh
RUN PYTHON=/opt/venv/bin/python bash scripts/install.sh --torch-only

# README.md is the package's long description; the glob keeps a checkout without it buildable.
COPY pyproject.toml README.md* ./
COPY kembed kembed
COPY predictor predictor
COPY transformer transformer
COPY eventing eventing
COPY inferenceservices inferenceservices
# Non-editable install into the venv, then bytecode for everything: the root filesystem is read-only at
# run time, so nothing could be cached later, and unchecked-hash pycs skip the source check on import
# (faster cold start; the image is immutable, so they cannot go stale). torch's internal test helpers
# include Python 3.12-only syntax and are never imported when serving.
RUN PYTHON=/opt/venv/bin/python bash scripts/install.sh . \
 && /opt/venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        -x '/torch/testing/_internal/' /opt/venv/lib

# The served model at /models with its OpenVINO IR: MODEL_SRC (a directory of the build context, not
# excluded by .dockerignore) or else a copy of the bundled model. kembed-export runs here, once: the root
# filesystem is read-only at run time, and the predictor's openvino backend (auto on a CPU) never exports.
ARG MODEL_SRC=""
RUN --mount=type=bind,target=/context \
    if [ -n "${MODEL_SRC}" ]; then \
        mkdir /models && cp -R "/context/${MODEL_SRC}/." /models/ && /opt/venv/bin/kembed-export /models; \
    else \
        /opt/venv/bin/kembed-export "$(/opt/venv/bin/python -c 'from kembed.cli import bundled_model_dir; print(bundled_model_dir())')" \
            --output /models; \
    fi


FROM ${BASE_IMAGE} AS runtime

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kembed" \
      org.opencontainers.image.description="Serverless text embeddings on KServe and Knative: predictor, transformer and eventing service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kembed/kembed" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# Read-only root filesystem: every cache and temp dir points into /tmp (an emptyDir in the manifests),
# and nothing downloads at run time (models come baked in or through KServe's storageUri).
# KEMBED_MODEL_DIR is /models: MODEL_SRC's model or the bundled one, each with its IR (kembed-export).
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    TMPDIR=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    KEMBED_MODEL_DIR=/models

# The base image ships its standard library without bytecode: compile it while the filesystem is
# writable. A numeric, non-root user (uid 1000) so that `runAsNonRoot: true` can verify it.
RUN python -m compileall -q -j 0 -x '/(test|tests|idle_test)/' "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
 && groupadd --gid 1000 kembed \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kembed

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /models /models

USER 1000:1000
EXPOSE 8080 8081
# No HEALTHCHECK: Kubernetes ignores it; readiness and liveness are the manifests' probes on
# /v2/health/ready and /v2/health/live, which wait for the model to load and warm up.
CMD ["kembed-predictor"]
