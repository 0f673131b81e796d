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
# Its int8 IR, for `make test` only (NNCF calibration on 400 texts the tests do not embed: ~3 min once).
MODEL_INT8 := .cache/models/all-minilm-l6-v2-int8
MODEL_INT8_IR := $(MODEL_INT8)/openvino/openvino_model_qint8_quantized.xml

.PHONY: setup serve serve-predictor test lint bench tools clean

# scripts/install.sh is the one install procedure, shared with the Dockerfile.
$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh --check-python
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	PYTHON=$(PY) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" bash scripts/install.sh -e ".[test]"
	touch $@

# Order-only on the venv: a reinstall does not redo the export; a changed exporter does.
$(MODEL_IR): predictor/export.py predictor/packed_graph.py predictor/packed_layout.py predictor/bert.py | $(STAMP)
	$(VENV)/bin/kembed-export "$$($(PY) -c 'from kembed.cli import bundled_model_dir; print(bundled_model_dir())')" \
		--output $(MODEL_CACHE)

$(MODEL_INT8_IR): predictor/export.py predictor/length_check.py kembed/corpus.py | $(STAMP)
	mkdir -p $(dir $(MODEL_INT8))
	$(PY) -c 'from kembed.corpus import english_corpus; print("\n".join(english_corpus(900)[400:]))' \
		> $(MODEL_INT8).calibration.txt
	$(VENV)/bin/kembed-export "$$($(PY) -c 'from kembed.cli import bundled_model_dir; print(bundled_model_dir())')" \
		--output $(MODEL_INT8) --int8 --calibration $(MODEL_INT8).calibration.txt

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

test: setup tools lint $(MODEL_INT8_IR)
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.predictor

clean:
	rm -rf $(VENV) .tools .pytest_cache .cache
