# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates/uses the venv in $(VENV) and installs what it needs. The torch build is pinned here, not in
# pyproject.toml: torch==2.13.0 is the small CPU build (use e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
# for the CUDA build with torchvision).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/worldmodel demo --out runs/demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/sim_throughput.py
	$(PY) bench/train_throughput.py
	$(PY) bench/sample_latency.py

clean:
	rm -rf runs .cache .pytest_cache
