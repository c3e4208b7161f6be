# The two commands of the README. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINTED := camjax configs benchmarks tests launch

.PHONY: demo test test-fast lint setup peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The peer frameworks benchmarks/compare.py times and its tests check (CI installs them): the
# CPU build of torch 2.13.0 (this workplace's machines hold its wheel; elsewhere pip downloads
# it) and the torchvision of that release, whose Python model code is all compare.py loads.
peers: $(STAMP)
	$(PY) -m pip install -q 'torch==2.13.0' 'torchvision==0.28.*'

demo: $(STAMP)
	$(PY) -m camjax.demo --workdir runs/demo

test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

# The edit-run loop: everything but the tests marked slow (multi-process, kill-and-resume,
# Keras comparisons of whole networks, benchmark smoke runs). CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) runs .cache
