"""What the compiled extension was built with, and what this process can use."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

__all__ = ["build_info"]


def build_info() -> dict[str, Any]:
    """Facts about the build and the runtime.

    Keys: ``torch`` (runtime version), ``built_with_torch``, ``cuda_compiled`` (CUDA
    kernels are registered for the ops), ``cuda_available`` (a GPU is usable now),
    ``cuda_arch_list`` (archs compiled for), ``cuda_runtime`` (torch's CUDA version),
    ``cxx`` and ``nvcc`` (compiler versions), ``cuda_home``, ``cuda_skipped`` (why the build
    left the CUDA kernels out, e.g. no nvcc found; empty when it built them).
    """
    from .kernels import ops  # noqa: F401  (loads the extension)

    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    recorded: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("oneprune::grouped_norms", "CUDA")
    return {
        "torch": torch.__version__,
        "built_with_torch": recorded.get("built_with_torch", "unknown"),
        "cuda_compiled": bool(has_cuda_kernel),
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda_runtime": torch.version.cuda,
        "cuda_arch_list": recorded.get("cuda_arch_list", ""),
        "cuda_home": recorded.get("cuda_home", ""),
        "cxx": recorded.get("cxx", "unknown"),
        "nvcc": recorded.get("nvcc", ""),
        "cuda_skipped": "" if has_cuda_kernel else recorded.get("cuda_skipped", "unknown (built before this was recorded)"),
    }
