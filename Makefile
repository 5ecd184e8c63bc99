# Two set-up commands: `make run` (tiny profile end to end) and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first and stays pinned: without it pip resolves peft's torch requirement on its own. On Linux
# PyPI's torch wheel is the CUDA build (several GB with its nvidia-* wheels) even on a machine without a GPU,
# so without an NVIDIA GPU (no nvidia-smi) `make` takes the CPU build from TORCH_CPU_INDEX when that answers,
# and says which wheel it installs and why. TORCH_PIP_ARGS="..." overrides the choice.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.semrl-installed
# dvc itself runs before any semrl code; every semrl process (and the test suite) sets the rest of the quiet
# environment from semrl/core/env.py.
export DVC_NO_ANALYTICS := 1
# Offline (nothing downloads from the Hugging Face hub) only where the corpora come from a mirror (CI,
# offline machines): the paper profile downloads Qwen3-4B and its embedders. `semrl check` names a model
# that offline mode would fail to load.
ifneq ($(SEMRL_DATA_MIRROR),)
# A relative mirror (`SEMRL_DATA_MIRROR=../shared/corpora make run`) means the directory make was called from;
# stages and tests run in other directories, so it is made absolute once, here.
export SEMRL_DATA_MIRROR := $(abspath $(SEMRL_DATA_MIRROR))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif

.PHONY: run test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("semrl needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@args="$(TORCH_PIP_ARGS)"; \
	if [ -n "$$args" ]; then echo "torch $(TORCH_VERSION): from TORCH_PIP_ARGS=$$args"; \
	elif [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
	  if $(BIN)/python -c 'import urllib.request as u; u.urlopen("$(TORCH_CPU_INDEX)/torch/", timeout=5)' 2>/dev/null; then \
	    args="--index-url $(TORCH_CPU_INDEX)"; \
	    echo "torch $(TORCH_VERSION): no NVIDIA GPU here (no nvidia-smi), so the CPU build from $(TORCH_CPU_INDEX) (PyPI's Linux wheel is the CUDA build, several GB)"; \
	  else \
	    echo "torch $(TORCH_VERSION): no NVIDIA GPU here, but $(TORCH_CPU_INDEX) does not answer: pip's default source (PyPI: the CUDA build, several GB; set TORCH_PIP_ARGS to choose)"; \
	  fi; \
	else echo "torch $(TORCH_VERSION): pip's default wheel (an NVIDIA GPU is present, or not Linux)"; fi; \
	$(BIN)/python -m pip install --quiet $$args torch==$(TORCH_VERSION)
	@$(BIN)/python -c 'import torch; print("torch", torch.__version__, "| CUDA build:", torch.version.cuda or "no (CPU only)")'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

# PROFILE=paper runs the pipeline as a DVC experiment with configs/paper.yaml as `-S` overrides (params.yaml
# keeps its comments; `dvc exp show` lists the run); without PROFILE, `dvc repro` of params.yaml as it is.
PROFILE ?=

# PROFILE=rehearsal first writes its random Qwen3 models (their tokenizer learns from data/prepared).
REHEARSAL := $(if $(filter rehearsal,$(PROFILE)),PATH="$(abspath $(BIN)):$$PATH" dvc repro prepare && $(BIN)/python -m semrl.models.rehearsal &&)

run: $(STAMP)
	$(if $(PROFILE),$(REHEARSAL) PATH="$(abspath $(BIN)):$$PATH" semrl check $(PROFILE) && PATH="$(abspath $(BIN)):$$PATH" semrl profile $(PROFILE) --run,PATH="$(abspath $(BIN)):$$PATH" dvc repro)
	@PATH="$(abspath $(BIN)):$$PATH" semrl where

# Two pytest workers (pytest-xdist): the suite's training steps run one torch thread each (train.torch_threads)
# and much of the rest waits on servers and subprocesses, so one worker left half of 2 cores idle. The smoke
# project is built once and shared by the workers (tests/conftest.py); TEST_WORKERS=0 runs in one process.
# TIERS picks the tiers (pytest markers; docs/tests.md): unit and pipeline by default; `make test TIERS=unit`
# for the fast tier alone, `make test TIERS=all` adds the benchmark-script, fault-injection and rehearsal tiers
# (CI runs all).
TEST_WORKERS ?= 2
TIERS ?= unit or pipeline

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -n $(TEST_WORKERS) $(if $(filter all,$(TIERS)),,-m "$(TIERS)") $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
