"""The build: CUDA kernels compiled whenever a toolkit and a CUDA torch are present."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import oneprune_ext


def _toolkit_cuda_major() -> str | None:
    """CUDA major version of the toolkit the build would use (setup.py's search), or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
    else:
        nvcc = "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.", out)
    return m.group(1) if m else None


def test_cuda_kernels_compiled_when_possible():
    """With a toolkit whose CUDA major version is torch's, the CUDA kernels are built (no GPU
    needed); otherwise the build is CPU-only and build_info() says why."""
    info = oneprune_ext.build_info()
    if os.environ.get("ONEPRUNE_CUDA", "") == "0" or info["cuda_skipped"] == "ONEPRUNE_CUDA=0":
        assert info["cuda_compiled"] is False  # built CPU-only on purpose
    elif torch.version.cuda is not None and _toolkit_cuda_major() == torch.version.cuda.split(".")[0]:
        # This is the point of the foundation: the CUDA sources build with no GPU visible.
        assert info["cuda_compiled"] is True, info
        assert info["cuda_arch_list"], info
    if info["cuda_compiled"]:
        assert info["cuda_skipped"] == ""
    else:
        assert info["cuda_skipped"], info  # why: no nvcc, a CPU-only torch, CUDA major versions differ
    for op in ("grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"oneprune::{op}", "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"oneprune::{op}", "CUDA") == info["cuda_compiled"]


def test_info_command_prints_build_info():
    out = subprocess.run([sys.executable, "-m", "oneprune_ext", "info"], capture_output=True, text=True, check=True)
    assert "cuda_compiled:" in out.stdout and "torch:" in out.stdout


def test_source_distribution_holds_every_kernel_source(tmp_path):
    """``pip install oneprune_ext-*.tar.gz`` compiles from the sdist alone: every file under
    csrc/ (headers included) and the CMake build are in it."""
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # a copy without build outputs: setuptools would also take the file list of a stale *.egg-info
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".*", "build*", "dist", "runs", "*.egg-info",
                                                             "__pycache__", "*.so"))
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=src, check=True,
                   capture_output=True, env=dict(os.environ, ONEPRUNE_CUDA="0"))
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {p.relative_to(root).as_posix() for p in (root / "csrc").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted - names == set(), f"missing from the sdist (MANIFEST.in): {sorted(wanted - names)}"
    assert {"setup.py", "pyproject.toml", "CMakeLists.txt", "README.md"} <= names


def _without_nvcc(tmp_path) -> dict[str, str]:
    """The environment of a machine without a CUDA toolkit: no ``nvcc`` on ``PATH``, and
    ``CUDA_HOME`` naming an empty folder. Hiding nvcc from PATH alone is not enough where a
    toolkit lies in /usr/local/cuda (setup.py, CMake and torch all look there); an explicit
    CUDA_HOME is the only folder they consider, so an empty one means "no toolkit"."""
    nowhere = tmp_path / "no-cuda-toolkit"
    nowhere.mkdir()
    path = [os.path.dirname(sys.executable)]  # the venv's ninja and cmake, as the Makefile does
    path += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not os.path.exists(os.path.join(d, "nvcc"))]
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "ONEPRUNE_CUDA", "CUDACXX")}
    env.update(PATH=os.pathsep.join(path), CUDA_HOME=str(nowhere), MAX_JOBS="2")
    assert shutil.which("nvcc", path=env["PATH"]) is None
    return env


def _copy_sources(tmp_path):
    from pathlib import Path

    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1], src, ignore=shutil.ignore_patterns(
        ".*", "build*", "dist", "runs", "*.egg-info", "__pycache__", "*.so", "_build_info.json"))
    return src


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_build_without_nvcc_is_cpu_only_and_says_so(tmp_path):
    """No nvcc: the pip build (what `make` runs) and the CMake build both succeed with the CPU
    kernels only, and each says so in one line; the CMake library then loads into torch. Both
    build at -O0 (ONEPRUNE_DEBUG=1, CMAKE_BUILD_TYPE=Debug): what is checked here is the build
    decision and that it goes through; the optimised CPU kernels are tested by everything else."""
    import zipfile

    src, env = _copy_sources(tmp_path), _without_nvcc(tmp_path)
    env["ONEPRUNE_DEBUG"] = "1"
    pip = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
                          "-w", str(tmp_path / "dist"), str(src)], env=env, capture_output=True, text=True)
    out = pip.stdout + pip.stderr
    assert pip.returncode == 0, out[-4000:]
    said = [ln for ln in out.splitlines() if "oneprune_ext: building the CPU kernels only" in ln]
    assert len(said) == 1 and "no CUDA toolkit" in said[0] and "has no bin/nvcc" in said[0], said
    (wheel,) = (tmp_path / "dist").glob("oneprune_ext-*.whl")
    with zipfile.ZipFile(wheel) as z:
        info = json.loads(z.read("oneprune_ext/_build_info.json"))
        assert any(n.startswith("oneprune_ext/_C") and n.endswith(".so") for n in z.namelist())
    assert info["cuda_compiled"] is False and info["cuda_skipped"] == said[0].split("only: ", 1)[1]

    build = tmp_path / "build-cmake"
    cfg = subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Debug",
                          f"-DPython_EXECUTABLE={sys.executable}"], env=env, capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-4000:] + cfg.stderr[-4000:]
    said = [ln for ln in cfg.stdout.splitlines() if "CPU kernels only" in ln]
    assert len(said) == 1 and "no CUDA toolkit" in said[0], cfg.stdout
    assert "ONEPRUNE_CUDA=OFF" in cfg.stdout
    for cmd in (["cmake", "--build", str(build), "-j2", "--target", "oneprune_ops"],
                ["ctest", "--test-dir", str(build), "--output-on-failure", "-R", "python_load_library"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-4000:]}{r.stderr[-4000:]}"
