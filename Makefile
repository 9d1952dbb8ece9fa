# SegX-Slicer: `make install` creates or reuses .venv; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test benchmark clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

benchmark: install
	$(PY) benchmarks/explain_overhead.py

clean-venv:
	rm -rf $(VENV)
