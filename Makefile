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

.PHONY: demo test build bench info cpp-test cmake-test asan-test clean

demo: $(BUILD_STAMP)
	$(PY) examples/digits_demo.py

# Python tests, then the C++ tests of the kernels (CMake/ctest, plain and under ASan+UBSan;
# CPU-only there: the pip build above already compiled the CUDA kernels).
test: $(BUILD_STAMP)
	$(PY) -m pytest python_tests $(PYTEST_ARGS)
	$(MAKE) cpp-test CMAKE_FLAGS=-DONEPRUNE_CUDA=OFF

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
	$(PY) -m pip install "torch>=2.4"
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) -m pip install --no-build-isolation -e ".[test,bench,plots]"
	$(PY) -m oneprune_ext info
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
