"""The build: CUDA kernels compiled whenever a toolkit and a CUDA torch are present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch

import oneprune_ext


def _toolkit_present() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc") is not None


def test_cuda_kernels_compiled_when_possible():
    info = oneprune_ext.build_info()
    if os.environ.get("ONEPRUNE_CUDA", "") == "0":
        assert info["cuda_compiled"] is False
    elif torch.version.cuda is not None and _toolkit_present():
        # This is the point of the foundation: the CUDA sources build with no GPU visible.
        assert info["cuda_compiled"] is True, info
        assert info["cuda_arch_list"], info
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
