# Tuneloop on one NVIDIA GPU: serving, the DuckDB store and nightly training in one container.
#   docker build -t tuneloop .
#   docker run --gpus all -p 7860:7860 -v tuneloop-data:/data tuneloop
# See docs/deploy.md (an admin user must exist before it listens on 0.0.0.0).

# The base image only brings the CUDA driver plumbing (NVIDIA_* variables, compat libraries): PyPI's
# Linux torch wheel ships its own CUDA runtime, cuBLAS and cuDNN as pip packages, so a -runtime or
# -cudnn image would hold a second copy of them.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python is 3.12 (Tuneloop needs >= 3.11); the release tag above fixes these versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app

# Dependencies first, pinned, in their own layer: code changes do not reinstall torch.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

COPY pyproject.toml README.md app.py settings.py ./
COPY serving ./serving
COPY feedback ./feedback
COPY retrain ./retrain
COPY web ./web
RUN pip install --no-deps .

# Home for the user's files; /data holds the DuckDB file, adapters, training sets, runs and the
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
# The first start downloads the base model, hence the long start period. urllib fails on 503 too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TUNELOOP_PORT', '7860') + '/healthz', timeout=4)"]

ENTRYPOINT ["python", "app.py"]
