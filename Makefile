# `make test` and `make demo` are the two commands a newcomer needs; both set up .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# e.g. --index-url https://download.pytorch.org/whl/cpu: PyPI's Linux torch wheel brings the CUDA libraries.
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`, each at one thread (tests/conftest.py); a file's tests stay together
# so that its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: test test-fast demo bench gpu-check setup clean

# torch first, pinned: an unpinned torch would pull the newest CUDA build with whatever the extras ask for.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[dev,eval]'
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The inner loop (well under 3 minutes on 2 cores): in-process tests only; one that starts a process
# fails here until it is marked `process` (tests/conftest.py).
test-fast: $(VENV)/.installed
	TITANS_TEST_FAST=1 $(PY) -m pytest -m "not process and not slow" $(PYTEST_ARGS)

# The whole path on CPU: tokenizer -> shards -> train tiny MAG -> preempt -> resume -> evaluate.
demo: $(VENV)/.installed
	$(PY) pretrain/demo.py --workdir demo_run

# Peers for the benchmarks (titans-pytorch) are an extra, not part of the test setup.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench
	$(PY) bench/memory_op.py --output bench/results/memory_op_cpu

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache demo_run

# On one H100/H200: the GPU tests and reduced GPU benchmarks in ~9 minutes (bench/gpu_check.py), with the
# machine's own python (its CUDA torch); GPU_CHECK_ARGS='--wheels DIR' installs what the image lacks.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)
