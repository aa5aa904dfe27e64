# Tuneloop: `make demo` installs and starts the app with an offline demo model; `make test` installs and tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build is enough for the demo and the tests; on a GPU box install the CUDA build of torch instead.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-quick test-gpu bench browser lint clean

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
