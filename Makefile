# Two entry points: `make run` (set up, then serve on 127.0.0.1:7860) and `make test`.
# `make run CONFIG=moe-suite.toml` serves with a settings file (see moe-suite.example.toml);
# HOST=... PORT=... override it. `.ci/run` installs Debian's chromium first (browser tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?=
PORT   ?=
CONFIG ?=
TORCH_VERSION ?= 2.13.0
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test bench bench-load clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(if $(CONFIG),MOE_SUITE_CONFIG=$(CONFIG)) $(VENV)/bin/moe-suite serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/moe-suite bench moe

bench-load: setup
	$(VENV)/bin/moe-suite bench load --warm --json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
