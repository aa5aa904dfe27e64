# Tuneloop in one container: serving, the DuckDB store and nightly training. Two flavours, one file:
#   docker build -t tuneloop .                                   # CUDA (torch's CUDA 13 wheels; host driver >= 580)
#   docker build --build-arg TORCH=cpu -t tuneloop:cpu .         # CPU only, a fraction of the size
#   docker run --gpus all -p 7860:7860 -v tuneloop-data:/data tuneloop
# Needs BuildKit (the default builder since Docker 23; `DOCKER_BUILDKIT=1` on 20.10). Build arguments:
#   BASE_IMAGE  a Debian bookworm image (default debian:bookworm-slim; `make docker-base` makes
#               tuneloop-base:bookworm with debootstrap where no registry can be reached)
#   TORCH       cuda (default) or cpu
# Secrets: `--secret id=ca_bundle,src=/path/company-ca.pem` for a TLS-intercepting proxy (used by pip
# during the build only, never stored in a layer). Offline: `make wheelhouse` (or wheelhouse-cpu) fills
# wheelhouse/<TORCH>/, and pip then installs from it alone. See docs/deploy.md.

ARG BASE_IMAGE=debian:bookworm-slim
ARG TORCH=cuda

# Debian bookworm's Python is 3.11, the Python the locks are resolved for. No nvidia/cuda base: PyPI's
# torch wheel brings its CUDA runtime, cuBLAS, cuDNN, NCCL as pip packages (pinned in requirements.lock),
# so a CUDA base image would add a second CUDA (12.8 where torch's is 13.0) that nothing loads. The
# driver (libcuda) comes from the host through the NVIDIA container toolkit (`--gpus`).
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && python3 -m venv "$VIRTUAL_ENV"

# Dependencies first, pinned, in their own layer: code changes do not reinstall torch. The wheelhouse
# folder of this flavour is bind-mounted (not copied) so its wheels never land in a layer, and filling
# the other flavour's folder does not invalidate this layer; when it holds wheels, pip uses it alone
# (--no-index), else the index. The CA bundle, when given, is pip's only.
FROM python AS deps-cuda
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    --mount=type=bind,source=wheelhouse/cuda,target=/wheelhouse \
    --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi; \
    pip install --no-deps --only-binary=:all: "$@" -r /tmp/requirements.lock
# For the NVIDIA container runtime when started without --gpus (e.g. `--runtime nvidia`).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM python AS deps-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,source=requirements-cpu.lock,target=/tmp/requirements.lock \
    --mount=type=bind,source=wheelhouse/cpu,target=/wheelhouse \
    --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    set -- --extra-index-url "$TORCH_CPU_INDEX"; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi; \
    pip install --no-deps --only-binary=:all: "$@" -r /tmp/requirements.lock

# hadolint ignore=DL3006
FROM deps-${TORCH} AS app
WORKDIR /app
COPY pyproject.toml README.md app.py settings.py ./
COPY serving ./serving
COPY feedback ./feedback
COPY retrain ./retrain
COPY web ./web
# setuptools comes from the lock: no build isolation, so this step needs no index either.
RUN pip install --no-deps --no-build-isolation --no-index . \
    && rm -rf build ./*.egg-info

# Home for the user's files; /data holds the DuckDB file, users, adapters, training sets, runs and the
# hub cache, so one volume keeps everything a restart needs.
RUN groupadd --gid 10001 tuneloop \
    && useradd --create-home --uid 10001 --gid 10001 tuneloop \
    && mkdir -p /data \
    && chown tuneloop:tuneloop /data
ENV TUNELOOP_DATA_DIR=/data \
    TUNELOOP_HOST=0.0.0.0 \
    TUNELOOP_PORT=7860 \
    HF_HOME=/data/hf-cache
VOLUME ["/data"]
USER 10001:10001

EXPOSE 7860
# The first start downloads the base model (or builds the demo model), hence the long start period;
# failures inside it do not count. urllib fails on 503 too.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TUNELOOP_PORT', '7860') + '/healthz', timeout=4)"]

ENTRYPOINT ["python", "app.py"]
