# regframe: `make demo` runs the demo, `make test` runs the tests; both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not slow" --timeout=900

test-all: install
	$(PY) -m pytest -q --timeout=3600

demo: install
	$(PY) -m regframe fit --config experiments/abdomen_cst.yaml --config experiments/demo.yaml

clean:
	rm -rf runs .pytest_cache
