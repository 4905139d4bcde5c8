"""ctest: load the CMake-built library into Python and call one op through torch.ops."""
import sys

import torch

torch.ops.load_library(sys.argv[1])
op = torch.ops.oneprune.grouped_norms
print(op)
w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
# two channels, one row each: segment (tensor 0, base 3c, 1 row of 3)
segs = torch.tensor([[0, 0, 1, 3, 3], [0, 3, 1, 3, 3]])
seg_ptr = torch.tensor([[0, 1, 2]])
args = {"tensors": [w], "numels": [6], "segs": segs, "seg_ptr": seg_ptr,
        # the same two rows as one run: (tensor, chan0, count, base, rows, row_len, row_stride, phase)
        "runs": torch.tensor([[0, 0, 2, 0, 1, 3, 3, 0]])}
names = [a.name for a in op.default._schema.arguments]
sq, sal = op(*[args[n] for n in names])
assert sq.tolist() == [5.0, 50.0], sq
assert torch.allclose(sal, sq / 3**0.5), sal
print("ok", sq.tolist(), sal.tolist(), "cuda kernel:", torch._C._dispatch_has_kernel_for_dispatch_key("oneprune::grouped_norms", "CUDA"))
