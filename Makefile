# Set-up and entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install torch FIRST (CPU build unless a GPU is present, so a
# CPU machine never pulls the multi-GB CUDA build), then this project.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Override e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	@if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q -e ".[cuda]" || echo "xformers not installed (optional)"; fi
	touch $@

install: $(VENV)/.installed

# The development checkout keeps MedMNIST beside it (../shared/data/medmnist); elsewhere the demo looks in
# $SYNTH_DATA_DIR and ~/.cache/synth, downloads when online, else falls back to phantom data.
DEMO_DATA ?= $(or $(SYNTH_DATA_DIR),$(wildcard ../shared/data/medmnist))

demo: install
	SYNTH_DATA_DIR="$(DEMO_DATA)" $(VENV)/bin/synth demo --out runs/demo

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
