# Tuneloop: `make demo` installs and starts the app with an offline demo model; `make test` installs and tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build is enough for the demo and the tests; on a GPU box install the CUDA build of torch instead.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-quick test-gpu bench browser lint clean \
	lock-check wheelhouse wheelhouse-cpu docker-base docker-build docker-build-cpu docker-test

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $@

install: $(VENV)/.installed

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(PY) app.py --demo

# Everything that runs without a GPU: unit, API, closed loop, load, faults, browser end to end (~10 min).
test: install browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast part only (~3 min): leaves out tests marked slow.
test-quick: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

# On a CUDA machine: 4-bit NF4 serving, mixed-adapter batches, and a whole QLoRA cycle (SFT+KTO, gate, publish, hot-swap).
test-gpu: install
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

bench: install
	$(PY) bench/run_all.py

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- Container images (Dockerfile; docs/deploy.md) ----
DOCKER ?= docker
IMAGE ?= tuneloop
# A Debian bookworm image; `make docker-base` makes tuneloop-base:bookworm where no registry is reachable.
BASE_IMAGE ?= debian:bookworm-slim
# A company CA bundle for pip inside the build (a build secret: used, never stored in a layer).
CA_BUNDLE ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DOCKER_BUILD = DOCKER_BUILDKIT=1 $(DOCKER) build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE))
comma := ,

# The CPU image's lock is derived from the CUDA one, so the two cannot drift apart.
requirements-cpu.lock: requirements.lock
	{ echo "# GENERATED from requirements.lock by \`make requirements-cpu.lock\`: the same pins without torch's CUDA"; \
	  echo "# wheels (nvidia-*, cuda-*, triton) and with PyTorch's CPU build of torch. Do not edit by hand."; \
	  grep -vE '^#|^(nvidia-|cuda-|triton==)' requirements.lock | sed 's/^torch==\(.*\)$$/torch==\1+cpu/'; } > $@

# Resolving each lock with its dependencies must add nothing (the image installs with --no-deps). Runs
# $(PYTHON)'s pip: ~3 min with pip 26 here, over 4 min per lock with pip 23 (PYTHON=.venv/bin/python).
lock-check: requirements-cpu.lock
	$(PYTHON) container/lock.py check requirements.lock
	$(PYTHON) container/lock.py check requirements-cpu.lock --extra-index-url $(TORCH_CPU_INDEX) \
	    $(if $(wildcard wheelhouse/cpu/*.whl),--find-links wheelhouse/cpu)

# Offline builds: the wheels of a lock in wheelhouse/<flavour>/, which the Dockerfile then uses alone.
wheelhouse:
	$(PYTHON) container/lock.py download requirements.lock wheelhouse/cuda

# The stamp lies outside wheelhouse/cpu: any file in there is part of the build's cache key.
wheelhouse/.cpu-complete: requirements-cpu.lock
	$(PYTHON) container/lock.py download requirements-cpu.lock wheelhouse/cpu --extra-index-url $(TORCH_CPU_INDEX)
	touch $@

wheelhouse-cpu: wheelhouse/.cpu-complete

docker-base:
	container/debian-base.sh tuneloop-base:bookworm

docker-build:
	$(DOCKER_BUILD) -t $(IMAGE) .

docker-build-cpu: wheelhouse-cpu
	$(DOCKER_BUILD) --build-arg TORCH=cpu -t $(IMAGE):cpu .

# Builds the CPU image with the README's line and smoke-tests the real container (~5-8 min cold).
SMOKE_ARGS ?=
docker-test: wheelhouse-cpu
	DOCKER=$(DOCKER) BASE_IMAGE=$(BASE_IMAGE) CA_BUNDLE=$(CA_BUNDLE) $(PYTHON) container/smoke_test.py $(SMOKE_ARGS)
