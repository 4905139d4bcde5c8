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

// Two dims d0 < d1 in one pass: the tensor seen as [P, S0, Q, S1, R]; destination
// (p, j0, q, j1) <- source (p, k0[j0], q, k1[j1]). Every mixed-radix digit and radix of the
// destination is <= the source's, so destinations stay <= sources and increase: the ascending
// sweep is safe in place, and only the kept entries are read (one pass instead of two).
template <typename E>
void compact2_elems(E* data, const int64_t* k0, const int64_t* k1, int64_t P, int64_t S0, int64_t Q,
                    int64_t S1, int64_t R, int64_t n0, int64_t n1) {
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j0 = 0; j0 < n0; ++j0)
      for (int64_t q = 0; q < Q; ++q) {
        E* dst = data + (((p * n0 + j0) * Q + q) * n1) * R;
        const E* srow = data + (((p * S0 + k0[j0]) * Q + q) * S1) * R;
        for (int64_t j1 = 0; j1 < n1; ++j1) {
          const E* src = srow + k1[j1] * R;
          E* d = dst + j1 * R;
          if (d == src) continue;
          if (R * static_cast<int64_t>(sizeof(E)) >= 64) {
            std::memmove(d, src, static_cast<size_t>(R) * sizeof(E));
          } else {
            for (int64_t r = 0; r < R; ++r) d[r] = src[r];
          }
        }
      }
}

// One job of compact_many_: a tensor compacted along entries [first, last) (increasing dims).
void compact_job(at::TensorList tensors, c10::IntArrayRef dims, at::TensorList keeps, size_t first,
                 size_t last) {
  const at::Tensor& t = tensors[first];
  std::vector<int64_t> sz(t.sizes().begin(), t.sizes().end());
  const int64_t nd = t.dim();
  if (last - first == 2) {
    const int64_t d0 = (dims[first] + nd) % nd, d1 = (dims[first + 1] + nd) % nd;
    int64_t Q = 1, R = 1, P = 1;
    for (int64_t i = 0; i < d0; ++i) P *= sz[i];
    for (int64_t i = d0 + 1; i < d1; ++i) Q *= sz[i];
    for (int64_t i = d1 + 1; i < nd; ++i) R *= sz[i];
    const int64_t* k0 = keeps[first].data_ptr<int64_t>();
    const int64_t* k1 = keeps[first + 1].data_ptr<int64_t>();
    const int64_t n0 = keeps[first].numel(), n1 = keeps[first + 1].numel();
    void* data = t.data_ptr();
    switch (t.element_size()) {
      case 1: compact2_elems(static_cast<uint8_t*>(data), k0, k1, P, sz[d0], Q, sz[d1], R, n0, n1); return;
      case 2: compact2_elems(static_cast<uint16_t*>(data), k0, k1, P, sz[d0], Q, sz[d1], R, n0, n1); return;
      case 4: compact2_elems(static_cast<uint32_t*>(data), k0, k1, P, sz[d0], Q, sz[d1], R, n0, n1); return;
      case 8: compact2_elems(static_cast<uint64_t*>(data), k0, k1, P, sz[d0], Q, sz[d1], R, n0, n1); return;
      default: break;
    }
  }
  for (size_t i = first; i < last; ++i) {  // one pass per dim, on the shrinking shape
    const int64_t d = (dims[i] + nd) % nd;
    compact_checked(t, compact_shape(sz, d), keeps[i]);
    sz[d] = keeps[i].numel();
  }
}

void compact_many_cpu(at::TensorList tensors, c10::IntArrayRef dims, at::TensorList keeps) {
  const auto jobs = check_compact_many(tensors, dims, keeps);
  // Every tensor's move is sequential; distinct tensors are independent.
  at::parallel_for(0, static_cast<int64_t>(jobs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) compact_job(tensors, dims, keeps, jobs[i].first, jobs[i].second);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) {
  m.impl("compact_", &compact_cpu);
  m.impl("compact_many_", &compact_many_cpu);
}

}  // namespace oneprune
