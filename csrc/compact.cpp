// compact_, CPU kernel: move kept slices to the front of a tensor's own storage.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>

#include "oneprune.h"

namespace oneprune {
namespace {

void compact_cpu(at::Tensor tensor, int64_t dim, const at::Tensor& keep) {
  const CompactShape s = check_compact(tensor, dim, keep);
  const int64_t n = keep.numel();
  const int64_t* k = keep.data_ptr<int64_t>();
  const size_t esize = tensor.element_size();
  char* base = static_cast<char*>(tensor.data_ptr());
  const size_t chunk = static_cast<size_t>(s.inner) * esize;
  // Destination (a, j) never lies after its source (a, keep[j]) and destinations
  // increase monotonically, so an ascending sweep never overwrites unread data.
  for (int64_t a = 0; a < s.outer; ++a) {
    for (int64_t j = 0; j < n; ++j) {
      char* dst = base + static_cast<size_t>(a * n + j) * chunk;
      const char* src = base + static_cast<size_t>(a * s.size + k[j]) * chunk;
      if (dst != src) std::memmove(dst, src, chunk);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("compact_", &compact_cpu); }

}  // namespace oneprune
