# oneprune_ext: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv when missing, install the dependencies, build the extension
# (CUDA kernels too when a CUDA toolkit and a CUDA build of torch are present), then run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.oneprune-deps
BUILD_STAMP := $(VENV)/.oneprune-build
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test build bench info cpp-test cmake-test asan-test test-isa test-torch clean

demo: $(BUILD_STAMP)
	$(PY) examples/digits_demo.py

# Python tests, then the C++ tests of the kernels (CMake/ctest, plain and under ASan+UBSan;
# CPU-only there: the pip build above already compiled the CUDA kernels), then the tests of
# training outcomes again under other CPU instruction sets (test-isa).
test: $(BUILD_STAMP)
	$(PY) -m pytest python_tests $(PYTEST_ARGS)
	$(MAKE) cpp-test CMAKE_FLAGS=-DONEPRUNE_CUDA=OFF
	$(MAKE) test-isa

# The tests marked `outcome` (they assert what a training run reaches: target, prune shock,
# accuracy) once per oneDNN instruction set in OUTCOME_ISAS. oneDNN picks other convolution
# kernels per ISA, so the floats of a run differ as they would on another CPU; an assertion that
# held on one machine by luck fails here. The plain run above used the CPU's best ISA; these add
# SSE4.1 and AVX-512 (AVX2 on a CPU without AVX-512). OUTCOME_ISAS= (empty) skips them.
OUTCOME_ISAS ?= SSE41 $(if $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo y),AVX512_CORE,AVX2)
test-isa: $(BUILD_STAMP)
	@for isa in $(OUTCOME_ISAS); do \
	  echo "== training-outcome tests with ONEDNN_MAX_CPU_ISA=$$isa"; \
	  ONEDNN_MAX_CPU_ISA=$$isa $(PY) -m pytest python_tests -m outcome -p no:cacheprovider $(PYTEST_ARGS) || exit 1; \
	done

# The whole `make test` against another torch release, e.g. `make test-torch TORCH=2.11.0`: in
# its own venv (.venv-torch-$(TORCH), git-ignored) with the torchvision release pip finds for it,
# built from a copy of the sources (the .venv build stays as it is). See .ci/test-torch.
TORCH ?=
test-torch:
	@test -n "$(TORCH)" || { echo "usage: make test-torch TORCH=2.11.0"; exit 2; }
	bash .ci/test-torch $(TORCH)

build: $(BUILD_STAMP)

info: $(BUILD_STAMP)
	$(PY) -m oneprune_ext info

bench: $(BUILD_STAMP)
	$(PY) -m pytest benchmarks --benchmark-columns=median,iqr,rounds --benchmark-sort=name

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: setup.py imports it, and the extension is built against the installed
# torch (--no-build-isolation), so a user never meets that flag.
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "setuptools>=64" wheel ninja
	$(PY) -m pip install "torch>=2.11"
	touch $@

# Ends with one line saying whether the CUDA kernels were built, and if not, why (no nvcc, a
# CPU-only torch, nvcc and torch of different CUDA major versions): never an error.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) -m pip install --no-build-isolation -e ".[test,bench,plots]"
	@$(PY) -c 'import oneprune_ext as o; i = o.build_info(); print("oneprune_ext: built for torch", i["torch"], \
	  "with the CUDA kernels (" + i["cuda_arch_list"] + ")" if i["cuda_compiled"] else \
	  "with the CPU kernels only: " + i["cuda_skipped"])'
	touch $@

# CMake build of the same sources (library for torch.ops.load_library + C++ tests);
# see csrc/tests/README.md. The sanitizer build skips the CUDA sources (device code is
# not instrumented) to save the nvcc compiles.
CMAKE_ENV = PATH=$(abspath $(VENV))/bin:$$PATH
CMAKE_PY = -DPython_EXECUTABLE=$(abspath $(PY))
CMAKE_FLAGS ?=
cpp-test: cmake-test asan-test

cmake-test: $(DEPS_STAMP)
	$(CMAKE_ENV) cmake -S . -B build-cmake -G Ninja $(CMAKE_PY) $(CMAKE_FLAGS)
	$(CMAKE_ENV) cmake --build build-cmake -j$$(nproc)
	ctest --test-dir build-cmake --output-on-failure

asan-test: $(DEPS_STAMP)
	$(CMAKE_ENV) cmake -S . -B build-asan -G Ninja $(CMAKE_PY) -DONEPRUNE_SANITIZE=ON -DONEPRUNE_CUDA=OFF
	$(CMAKE_ENV) cmake --build build-asan -j$$(nproc)
	ctest --test-dir build-asan --output-on-failure

clean:
	rm -rf build build-cmake build-asan oneprune_ext/_C*.so oneprune_ext/_build_info.json $(BUILD_STAMP)
