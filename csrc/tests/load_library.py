"""ctest: load the CMake-built library into Python and call one op through torch.ops."""
import sys

import torch

torch.ops.load_library(sys.argv[1])
op = torch.ops.oneprune.grouped_norms
print(op)
w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
# Two channels, one row each: a hand-written layout table (format in csrc/layout_index.h).
header = [0x4F4E4550, 1, 1, 2, 1, 1, 2, 2]           # magic, version, tensors, channels, tiles, chunks, slots, entries
tensor = [6, 2, 2, 3] + [0] * 6 + [3, 1] + [0] * 6   # numel, ndim, sizes[8], strides[8]
tile = [0, 0, 2, 3, 3, 0, 1, 2, -1, 1, 1]            # 2 lines of 3; line l -> channel l
chunk = [0, 0, 2, 0, 3, 0]                           # the whole tile, slots 0..1
table = torch.tensor(header + tensor + tile + chunk + [0, 1, 2] + [0, 3, 1, 3] + [1, 1])
sq, sal = op([w], table, 2)
assert sq.tolist() == [5.0, 50.0], sq
assert torch.allclose(sal, sq / 3**0.5), sal
print("ok", sq.tolist(), sal.tolist(), "cuda kernel:", torch._C._dispatch_has_kernel_for_dispatch_key("oneprune::grouped_norms", "CUDA"))
