# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, encode/decode/verify the shipped demo image, compare with PNG/JPEG-XL
#   make test   create .venv, install, run the test suite (what CI runs)
#
# TORCH pins the CPU build that sits on this project's machines' disk; an unpinned torch pulls a
# multi-GB CUDA build. On your own machine: make setup TORCH=torch (or any build you like).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(BIN)/snailcompress demo

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
