// compact_, CPU kernel: move kept slices to the front of a tensor's own storage.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

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

// The move itself, on checked arguments.
void compact_checked(const at::Tensor& tensor, const CompactShape& s, const at::Tensor& keep) {
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

void compact_cpu(at::Tensor tensor, int64_t dim, const at::Tensor& keep) {
  compact_checked(tensor, check_compact(tensor, dim, keep), keep);
}

void compact_many_cpu(at::TensorList tensors, c10::IntArrayRef dims, at::TensorList keeps) {
  check_compact_many(tensors, dims, keeps);
  std::vector<CompactShape> shapes;
  shapes.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) shapes.push_back(check_compact(tensors[i], dims[i], keeps[i]));
  // Every tensor's move is sequential; distinct tensors are independent.
  at::parallel_for(0, static_cast<int64_t>(tensors.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) compact_checked(tensors[i], shapes[i], keeps[i]);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) {
  m.impl("compact_", &compact_cpu);
  m.impl("compact_many_", &compact_many_cpu);
}

}  // namespace oneprune
