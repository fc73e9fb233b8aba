# `make test` and `make demo` are the two commands a newcomer needs; both set up .venv when missing.
# A combination is chosen by the interpreter: `make setup PYTHON=python3.12 VENV=.venv312`, then
# `make test-fast VENV=.venv312` (README, Installing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The lock of the tested environment for this interpreter, chosen by the venv's python (or PYTHON's
# before there is a venv): requirements/lock-py311.txt (megatron-core 0.16.1, torch's CPU build),
# requirements/lock-py312.txt (megatron-core 0.19). `make lock` writes them.
# An interpreter's version as the locks name it (311, 312)
pyver = $(shell $(1) -c 'import sys; print("%d%d" % sys.version_info[:2])')
PYVER := $(call pyver,$(if $(wildcard $(PY)),$(PY),$(PYTHON)))
LOCK ?= requirements/lock-py$(PYVER).txt
# Where pip finds torch's CPU build (2.13.0+cpu in lock-py311.txt; PyPI's build in lock-py312.txt),
# e.g. `--find-links DIR` for a folder of wheels instead. torch is installed apart so that only its
# install asks that index.
TORCH_PIP_ARGS ?= $(if $(shell grep -s '^torch==.*+cpu' $(LOCK)),--extra-index-url https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`, each at one thread (tests/conftest.py); a file's tests stay together
# so that its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: test test-fast test-megatron demo bench gpu-check setup lock check-latest clean

# Exactly the locked versions, hashes checked; then this project alone, which the lock does not name.
$(VENV)/.installed: pyproject.toml $(wildcard $(LOCK))
	@test -n "$(PYVER)" -a -f $(LOCK) || { echo "no lock for $(PYTHON) (Python $(PYVER)): $(LOCK) (tested: requirements/lock-py*.txt; README, Installing)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	awk '/^[a-z]/ {keep = /^torch==/} keep' $(LOCK) > $(VENV)/lock-torch.txt
	awk '/^[a-z]/ {keep = !/^torch==/} keep' $(LOCK) > $(VENV)/lock-rest.txt
	$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/lock-torch.txt $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/lock-rest.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The inner loop (well under 3 minutes on 2 cores): in-process tests only; one that starts a process
# fails here until it is marked `process` (tests/conftest.py).
test-fast: $(VENV)/.installed
	TITANS_TEST_FAST=1 $(PY) -m pytest -m "not process and not slow" $(PYTEST_ARGS)

# The Megatron paths in processes (DDP, distributed optimizer, TP/SP/CP over gloo, sharded checkpoints):
# what CI runs on the second combination besides test-fast.
MEGATRON_TESTS := tests/pretrain/test_megatron_path.py tests/pretrain/test_megatron_optim.py \
	tests/pretrain/test_distributed.py tests/pretrain/test_resharding.py \
	tests/pretrain/test_sharded_checkpoint.py tests/titans_megatron
test-megatron: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "process" $(MEGATRON_TESTS) $(PYTEST_ARGS)

# The whole path on CPU: tokenizer -> shards -> train tiny MAG -> preempt -> resume -> evaluate.
demo: $(VENV)/.installed
	$(PY) pretrain/demo.py --workdir demo_run

# Rewrites the locks from pyproject's ranges (the newest versions they allow today), with hashes, by uv
# (pinned, in its own venv). Run it when a range changes or to move the tested set forward, then `make
# test` on both combinations. torch is held at TORCH_VERSION: its CPU build for 3.11, PyPI's for 3.12.
TORCH_VERSION ?= 2.13.0
UV_VERSION ?= 0.13.10
LOCK_TOOL_VENV ?= .venv-lock
LOCK_ARGS ?= --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
LOCK_COMPILE = $(LOCK_TOOL_VENV)/bin/uv pip compile --generate-hashes --quiet --python-platform x86_64-manylinux_2_28 \
	--upgrade --custom-compile-command 'make lock' $(LOCK_ARGS)
lock:
	test -x $(LOCK_TOOL_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOL_VENV) && $(LOCK_TOOL_VENV)/bin/pip install -q uv==$(UV_VERSION); }
	mkdir -p requirements
	for pair in 311:+cpu 312:; do py=$${pair%%:*}; build=$${pair#*:}; \
	  $(LOCK_COMPILE) --python-version $${py:0:1}.$${py:1} pyproject.toml --extra dev --extra eval \
	    <(echo "torch==$(TORCH_VERSION)$$build") -o requirements/lock-py$$py.txt || exit 1; \
	done

# The newest versions pyproject's ranges allow, into a scratch venv, then the fast tier there: drift (a
# new transformers, lm-eval, megatron-core) is found here before users find it. Run it before a release,
# when a dependency announces one, and at the start of a working session. torch stays at TORCH_VERSION
# (clusters bring their own build); LATEST_TORCH=torch tries the newest.
LATEST_VENV ?= .venv-latest
LATEST_TORCH ?= torch==$(TORCH_VERSION)
LATEST_LOCK = requirements/lock-py$(call pyver,$(PYTHON)).txt
check-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q '$(LATEST_TORCH)' $(TORCH_PIP_ARGS)
	$(LATEST_VENV)/bin/python -m pip install -q -e '.[dev,eval]'
	$(LATEST_VENV)/bin/python -m pip check
	$(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' > $(LATEST_VENV)/resolved.txt
	@echo "resolved (newest allowed): $(LATEST_VENV)/resolved.txt; differences from $(LATEST_LOCK):"
	@diff <(grep -E '^[A-Za-z0-9_.-]+==' $(LATEST_LOCK) | sed 's/ .*//' | tr 'A-Z_' 'a-z-' | sort) \
	      <(tr 'A-Z_' 'a-z-' < $(LATEST_VENV)/resolved.txt | sort) | grep '^[<>]' || true
	touch $(LATEST_VENV)/.installed
	TITANS_CHECK_LATEST=1 $(MAKE) test-fast VENV=$(LATEST_VENV) LOCK=$(LATEST_LOCK)

# Peers for the benchmarks (titans-pytorch) are an extra, not part of the test setup.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench
	$(PY) bench/memory_op.py --output bench/results/memory_op_cpu

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_TOOL_VENV) *.egg-info .pytest_cache demo_run

# On one H100/H200: the GPU tests and reduced GPU benchmarks in ~9 minutes (bench/gpu_check.py), with the
# machine's own python (its CUDA torch); GPU_CHECK_ARGS='--wheels DIR' installs what the image lacks.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)
