# Two commands for a newcomer, each setting up whatever is missing first:
#
#   make run    the main job: lightning-curate fit -c configs/mog8.yaml
#   make test   the test suite: python -m pytest -q
#   make lint   ruff (style, imports, docstrings) and mypy (types) on the package
#   make docs   the documentation site: mkdocs build --strict into site/
#
# Setup (idempotent; a second run installs nothing):
#   * the virtual environment: the active one ($VIRTUAL_ENV), else .venv,
#     created with $(PYTHON) when it does not exist;
#   * torch, only when it cannot be imported there: pip install $(TORCH_SPEC).
#     GPU users choose their own build by installing it first into the venv, or
#     with e.g.  make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/<cuda tag>"
#     On Linux, a plain torch==2.13.0 from PyPI is the CUDA build; for a small
#     CPU-only one use  TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   * the package with its test, dev and docs extras (pip install -e ".[test,dev,docs]"), and torchcfm
#     without its dependencies (its UNet needs only torch and numpy), again only when pyproject.toml
#     changed since the last install (a stamp file in the venv).
# Extra pytest arguments: make test ARGS="tests/ops -x"; extra fit arguments:
# make run ARGS="--trainer.default_root_dir runs/other".

PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
STAMP := $(VENV)/.lightning-curate-installed

.PHONY: run test lint docs setup

run: setup
	$(BIN)/lightning-curate fit -c configs/mog8.yaml $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

docs: setup
	$(BIN)/python -m mkdocs build --strict --site-dir site

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) into $(VENV)"; $(PIP) install $(TORCH_SPEC); }
	@echo "installing lightning-curate (editable, with its test, dev and docs extras) into $(VENV)"
	@$(PIP) install -e ".[test,dev,docs]"
	@$(PIP) install --no-deps "torchcfm==1.0.7"  # its UNet for tests/models/test_torchcfm.py, without torchdyn & co
	@touch $(STAMP)
