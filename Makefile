# Two set-up commands: `make run` (tiny profile end to end) and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first and stays pinned: without it pip resolves peft's torch requirement to a multi-GB
# CUDA build. Pass e.g. TORCH_PIP_ARGS="--index-url <a CPU wheel index>" to pick another wheel source.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.semrl-installed
# dvc itself runs before any semrl code; every semrl process (and the test suite) sets the rest of the quiet
# environment from semrl/core/env.py.
export DVC_NO_ANALYTICS := 1
# Offline (nothing downloads from the Hugging Face hub) only where the corpora come from a mirror (CI,
# offline machines): the paper profile downloads Qwen3-4B and its embedders. `semrl check` names a model
# that offline mode would fail to load.
ifneq ($(SEMRL_DATA_MIRROR),)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: run test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("semrl needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

# PROFILE=paper merges configs/paper.yaml into params.yaml first (undo: git checkout params.yaml).
PROFILE ?=

run: $(STAMP)
	$(if $(PROFILE),PATH="$(CURDIR)/$(BIN):$$PATH" semrl check $(PROFILE) && PATH="$(CURDIR)/$(BIN):$$PATH" semrl profile $(PROFILE))
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@PATH="$(CURDIR)/$(BIN):$$PATH" semrl where

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
