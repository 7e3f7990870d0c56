# Two commands for a newcomer: `make test` and `make demo`. Each does its own set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARTIFACT ?= artifacts/all-MiniLM-L6-v2
STSB_DEV ?= ../shared/data/stsb/stsb-en-dev.csv
PACKAGES := contract worker producer modelbuild localfleet
# torch==2.13.0 is a local CPU wheel on these machines; look there when the folder exists.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

export EMBED_MODEL_DIR ?= $(abspath $(ARTIFACT))

.PHONY: install artifact lint browser test test-unit drills demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) -e ".[worker,flower,modelbuild,gateway,dev]"
	touch $@

artifact: $(ARTIFACT)/manifest.json

$(ARTIFACT)/manifest.json: | $(VENV)/.installed
	$(PY) -m modelbuild build --out $(ARTIFACT)

lint: install
	$(VENV)/bin/ruff check $(PACKAGES) tests bench
	$(VENV)/bin/mypy

# Debian's chromium and chromedriver, for the Flower browser test (installed once, with apt).
browser:
	localfleet/install-chromium.sh

test: install artifact lint browser
	$(PY) -m pytest -q -ra -m "not drill"

# Fault drills on real processes (about 11 minutes); .ci/run runs them after `make test`.
drills: install artifact
	$(PY) -m pytest -q -ra -m drill tests/drills

test-unit: install
	$(PY) -m pytest -q -m "not fleet and not slow and not drill"

# make demo KEEP=1 leaves the fleet and Flower up until Ctrl-C.
demo: install artifact
	$(PY) -m localfleet.demo $(if $(KEEP),--keep,)

bench: install artifact
	$(PY) bench/throughput.py --stsb $(STSB_DEV)

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
