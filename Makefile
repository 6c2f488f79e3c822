# make install   create .venv if missing, install torch and electra_fast (editable, dev extras)
# make test      install, then lint and the test suite
# make demo      install, then the whole pipeline on the bundled sample (a few minutes on CPU)
# make bench     install, then the benchmarks (pytest-benchmark); the table goes to .benchmarks/
# make test-cpu-torch   the same suite against the CPU-only torch wheel (no CUDA code built), in a
#                       temporary clone of HEAD so that its build leaves this tree's alone
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
PY := $(VENV)/bin/python

.PHONY: install test lint bench demo test-cpu-torch clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel ninja numpy pybind11
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	$(PY) -m electra_fast.info

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m electra_fast.cli download-vi-dicts  # coccoc's dictionaries, for the agreement tests
	$(PY) -m pytest
	$(PY) -m pytest -q benchmarks --benchmark-disable  # the benchmarks still run, untimed

demo: install
	$(PY) -m pip install -q matplotlib
	$(PY) scripts/demo.py

bench: install
	$(PY) -m pytest benchmarks --benchmark-json .benchmarks/latest.json
	$(PY) benchmarks/report.py .benchmarks/latest.json

test-cpu-torch:
	tmp=$$(mktemp -d) && git clone -q . $$tmp/electra_fast && \
	  $(MAKE) -C $$tmp/electra_fast test TORCH=torch==2.13.0 && rm -rf $$tmp

clean:
	rm -rf build electra_fast/*.so electra_fast/_build_info.json .benchmarks
