# One entry point for people and CI. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch's CPU build by default (PyTorch's CPU index as an extra source, see scripts/install.sh);
# CUDA: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.kembed-installed
# The bundled model with its OpenVINO IR, exported once (kembed-export) and served by `make serve`.
MODEL_CACHE := .cache/models/all-minilm-l6-v2
MODEL_IR := $(MODEL_CACHE)/openvino/openvino_model.xml

.PHONY: setup serve serve-predictor test lint bench tools clean

# scripts/install.sh is the one install procedure, shared with the Dockerfile.
$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh --check-python
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	PYTHON=$(PY) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" bash scripts/install.sh -e ".[test]"
	touch $@

# Order-only on the venv: a reinstall does not redo the export; a changed exporter does.
$(MODEL_IR): predictor/export.py | $(STAMP)
	$(VENV)/bin/kembed-export "$$($(PY) -c 'from kembed.cli import bundled_model_dir; print(bundled_model_dir())')" \
		--output $(MODEL_CACHE)

setup: $(STAMP) $(MODEL_IR)

# Predictor and transformer together on this machine (ports in README); Ctrl-C stops both.
serve: setup
	KEMBED_MODEL_DIR="$${KEMBED_MODEL_DIR:-$(MODEL_CACHE)}" $(VENV)/bin/python -m scripts.serve_stack

serve-predictor: setup
	KEMBED_MODEL_DIR="$${KEMBED_MODEL_DIR:-$(MODEL_CACHE)}" $(PY) -m predictor

tools: setup
	bash scripts/fetch-kubectl.sh
	bash scripts/fetch-promtool.sh

lint: setup
	$(VENV)/bin/ruff check .

test: setup tools lint
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.predictor

clean:
	rm -rf $(VENV) .tools .pytest_cache .cache
