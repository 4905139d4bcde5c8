// compact_, CPU kernel: move kept slices to the front of a tensor's own storage.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "oneprune.h"

namespace oneprune {
namespace {

template <typename E>
void compact_elems(E* data, const int64_t* k, int64_t outer, int64_t size, int64_t n, int64_t inner) {
  for (int64_t a = 0; a < outer; ++a) {
    for (int64_t j = 0; j < n; ++j) {
      E* dst = data + (a * n + j) * inner;
      const E* src = data + (a * size + k[j]) * inner;
      if (dst == src) continue;
      for (int64_t b = 0; b < inner; ++b) dst[b] = src[b];  // ascending: never overtakes src
    }
  }
}

void compact_cpu(at::Tensor tensor, int64_t dim, const at::Tensor& keep) {
  const CompactShape s = check_compact(tensor, dim, keep);
  const int64_t n = keep.numel();
  const int64_t* k = keep.data_ptr<int64_t>();
  const size_t esize = tensor.element_size();
  char* base = static_cast<char*>(tensor.data_ptr());
  const size_t chunk = static_cast<size_t>(s.inner) * esize;
  // Destination (a, j) never lies after its source (a, keep[j]) and destinations
  // increase monotonically, so an ascending sweep never overwrites unread data.
  if (chunk < 64) {
    // Short slices (input channels of 1x1 / 3x3 convs): typed element copies, no call per slice.
    switch (esize) {
      case 1: compact_elems(reinterpret_cast<uint8_t*>(base), k, s.outer, s.size, n, s.inner); return;
      case 2: compact_elems(reinterpret_cast<uint16_t*>(base), k, s.outer, s.size, n, s.inner); return;
      case 4: compact_elems(reinterpret_cast<uint32_t*>(base), k, s.outer, s.size, n, s.inner); return;
      case 8: compact_elems(reinterpret_cast<uint64_t*>(base), k, s.outer, s.size, n, s.inner); return;
      default: break;
    }
  }
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
