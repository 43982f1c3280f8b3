# Two entry points for a fresh clone (see README):
#   make train   -> set up .venv, then `python run.py train --scenario highway`
#   make test    -> set up .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned to the CPU wheel available on these machines, so that no resolver
# pulls the multi-GB CUDA build; then the project itself (editable). `make test` adds the test
# extras and the distributed extra (Ray), so that CI runs the sweep tests too; `make train`
# stays on the light base install.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-extras: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,dist]"
	touch $@

setup: $(VENV)/.installed-extras

train: $(VENV)/.installed
	$(PY) run.py train --scenario highway

test: setup
	$(PY) -m pytest -q -n 2

bench: setup
	$(PY) run.py bench env

clean:
	rm -rf $(VENV) runs .pytest_cache
