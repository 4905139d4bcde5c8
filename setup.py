"""Build script for oneprune_ext and its compiled ops (``oneprune_ext._C``).

Builds a CUDAExtension whenever the CUDA toolkit is found, the installed torch is a
CUDA build and both have the same CUDA major version, whether or not a GPU is visible; a
CPU-only CppExtension otherwise, and the build says why in one line (also recorded in
``oneprune_ext.build_info()["cuda_skipped"]``).

Environment overrides:
  ONEPRUNE_CUDA=1          require the CUDA kernels (fail, saying why, if they cannot be built)
  ONEPRUNE_CUDA=0          build the CPU kernels only
  CUDA_HOME=/path          the CUDA toolkit; when set, only this folder counts (one without
                           bin/nvcc means "no toolkit"). Default: /usr/local/cuda when it holds
                           bin/nvcc, else the real location of `nvcc` on PATH
  TORCH_CUDA_ARCH_LIST     GPU archs (default: the visible GPUs, or "8.0;9.0+PTX" when none)
  ONEPRUNE_DEBUG=1         -O0 -g builds
The build needs the installed torch: use ``pip install --no-build-isolation``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _find_cuda_home() -> str | None:
    """The toolkit folder: $CUDA_HOME (when set, it alone counts), else /usr/local/cuda, else
    nvcc's real location on PATH; None when there is no nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var] if os.path.exists(os.path.join(os.environ[var], "bin", "nvcc")) else None
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


# torch.utils.cpp_extension reads CUDA_HOME at import time and guesses wrong when
# `nvcc` on PATH is a wrapper script, so settle it before importing.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _compiler_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[-1] if cmd[0].endswith("nvcc") else (lines[0] if lines else "unknown")


def _nvcc_release(home: str) -> str | None:
    """nvcc's CUDA version ("13.0") from ``nvcc --version``, or None."""
    text = _compiler_version([os.path.join(home, "bin", "nvcc"), "--version"])
    m = re.search(r"release (\d+\.\d+)", text) or re.search(r"cuda_(\d+\.\d+)", text)
    return m.group(1) if m else None


def _why_no_cuda() -> str:
    """Why the CUDA kernels cannot be built here ("" when they can)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if _cuda_home is None:
        var = next((v for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)), None)
        where = f"{var}={os.environ[var]} has no bin/nvcc" if var else "no nvcc in /usr/local/cuda/bin nor on PATH"
        return f"no CUDA toolkit ({where}; set CUDA_HOME to one)"
    nvcc = _nvcc_release(_cuda_home)
    if nvcc is not None and nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch.utils.cpp_extension refuses a major-version mismatch (the kernels would not load)
        return (f"nvcc at {_cuda_home} is CUDA {nvcc}, torch {torch.__version__} was built with CUDA "
                f"{torch.version.cuda} (the major versions must match; set CUDA_HOME to a CUDA "
                f"{torch.version.cuda.split('.')[0]}.x toolkit)")
    return ""


def _cuda_plan() -> tuple[bool, str]:
    """(build the CUDA kernels?, why not, when not)."""
    flag = os.environ.get("ONEPRUNE_CUDA", "").strip().lower()
    if flag in ("0", "false", "off", "no"):
        return False, "ONEPRUNE_CUDA=0"
    why = _why_no_cuda()
    if why and flag in ("1", "true", "on", "yes"):
        sys.exit(f"ONEPRUNE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    return not why, why


WITH_CUDA, CUDA_SKIPPED = _cuda_plan()
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS

debug = os.environ.get("ONEPRUNE_DEBUG") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
# at::parallel_for is inline OpenMP code when torch's ATen backend is OpenMP (the default
# wheels): without -fopenmp the CPU kernels would silently run on one thread.
openmp = "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux")
link_flags = ["-fopenmp"] if openmp else []
if openmp:
    cxx_flags.append("-fopenmp")
nvcc_flags = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
if WITH_CUDA:
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    ext = CUDAExtension(
        "oneprune_ext._C",
        sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension(
        "oneprune_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
    )


class BuildWithInfo(BuildExtension):
    """BuildExtension that also records what was built in oneprune_ext/_build_info.json."""

    def run(self) -> None:
        if not WITH_CUDA:  # one line (pip shows it with -v; `make` prints build_info()'s copy)
            print(f"oneprune_ext: building the CPU kernels only: {CUDA_SKIPPED}", file=sys.stderr, flush=True)
        super().run()
        info = {
            "cuda_compiled": WITH_CUDA,
            "cuda_skipped": CUDA_SKIPPED,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else "",
            "cuda_home": _cuda_home if WITH_CUDA else "",
            "built_with_torch": torch.__version__,
            "cxx": _compiler_version([os.environ.get("CXX", "c++"), "--version"]),
            "nvcc": _compiler_version([os.path.join(_cuda_home, "bin", "nvcc"), "--version"])
            if WITH_CUDA
            else "",
        }
        for target in {os.path.join(HERE, "oneprune_ext"), os.path.join(self.build_lib, "oneprune_ext")}:
            if os.path.isdir(target):
                with open(os.path.join(target, "_build_info.json"), "w") as f:
                    json.dump(info, f, indent=2)


setup(
    packages=find_packages(include=["oneprune_ext", "oneprune_ext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
    package_data={"oneprune_ext": ["_build_info.json"]},
)
