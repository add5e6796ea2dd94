# Two entry points (see README): `make demo` runs the main job on embedded data,
# `make test` runs the test suite. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vscan-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vscan.cli train --config configs/demo_digits.yaml

test: $(STAMP)
	$(PY) tools/run_tests.py

clean:
	rm -rf $(VENV) runs .pytest_cache
