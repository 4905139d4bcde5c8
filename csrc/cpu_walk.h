// CPU kernels' walk over the layout table (csrc/layout_index.h): one chunk per work item,
// lines in order, positions in order within a line, so every chunk streams contiguous memory.
// All index math (element offsets, line/position groups, their channels, slots) comes from
// layout_index.h, the same functions the CUDA kernels use.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#include "layout_index.h"

namespace oneprune {
namespace cpu {

using layout::Chunk;
using layout::ChunkSlots;
using layout::Table;
using layout::Tile;

// Raw data pointers and dtypes of a tensor list, read once per op call.
struct TensorTable {
  std::vector<char*> ptr;
  std::vector<at::ScalarType> dtype;
  explicit TensorTable(at::TensorList ts) {
    ptr.reserve(ts.size());
    dtype.reserve(ts.size());
    for (const auto& t : ts) {
      ptr.push_back(t.defined() ? static_cast<char*>(t.data_ptr()) : nullptr);
      dtype.push_back(t.defined() ? t.scalar_type() : at::kFloat);
    }
  }
};

// Calls f(T{}) with T the C++ type of a float32/float16/bfloat16 dtype.
template <typename F>
inline void dispatch_dtype(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "oneprune: unsupported dtype ", dt);
  }
}

// fp32 sum of squares of n contiguous values; eight partial sums in a fixed order.
template <typename T>
inline float sumsq(const T* p, int64_t n) {
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) {
      const float v = static_cast<float>(p[j + u]);
      a[u] += v * v;
    }
  }
  for (; j < n; ++j) {
    const float v = static_cast<float>(p[j]);
    a[0] += v * v;
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Partial sums of squares of one chunk into out[0 .. nls + nps): its line groups, then its
// position groups (see layout_index.h).
template <typename T>
inline void chunk_sumsq(const T* data, const Tile& t, const Chunk& c, float* out) {
  const ChunkSlots s = layout::chunk_slots(t, c);
  float* lsum = out;
  float* psum = out + s.nls;
  for (int64_t k = 0; k < s.nls + s.nps; ++k) out[k] = 0.f;
  for (int64_t l = c.l0; l < c.l0 + c.nl; ++l) {
    const T* p = data + layout::element_index(t, l, c.j0);
    float line = 0.f;
    if (s.nps == 0) {
      line = sumsq(p, c.nj);
    } else if (t.pdiv == 1) {  // one position per group: a branch-free loop across channels
      for (int64_t k = 0; k < c.nj; ++k) {
        const float v = static_cast<float>(p[k]);
        psum[k] += v * v;
      }
      if (s.nls) line = sumsq(p, c.nj);
    } else {
      for (int64_t g = s.gp0; g < s.gp0 + s.nps; ++g) {
        int64_t a, b;
        layout::group_positions(t, c, g, &a, &b);
        const float q = sumsq(p + (a - c.j0), b - a);
        psum[g - s.gp0] += q;
        line += q;
      }
    }
    if (s.nls) lsum[layout::line_group(t, l) - s.gl0] += line;
  }
}

// Per-channel coefficient of an update: `active[c]` (the mask) and `value[c]`.
struct Coefs {
  const bool* active;
  const float* value;
};

// The two update rules. An element of an active line channel gets line(x, s, line value); then
// an element of an active position channel gets pos(y, s, position value) ("rows first", as a
// per-slice loop). `kNeutral` is the position value that changes nothing.
struct ScaleOp {
  static constexpr float kNeutral = 1.f;
  static float line(float w, float, float f) { return w * f; }
  static float pos(float w, float, float f) { return w * f; }
};
struct LassoOp {  // x = grad, s = weight
  static constexpr float kNeutral = 0.f;
  static float line(float g, float w, float c) { return g + c * w; }
  static float pos(float g, float w, float c) { return g + c * w; }
};

// Updates every element of chunk c that belongs to an active line or position channel (see
// ScaleOp / LassoOp), in fp32; `src` is the second operand (weights for LassoOp). Elements of
// inactive channels are not changed. The inner loops are branch-free.
template <typename Op, typename T>
inline void chunk_update(T* dst, const T* src, const Tile& t, const Chunk& c, Coefs co) {
  const ChunkSlots s = layout::chunk_slots(t, c);
  bool pact[layout::kMaxChunkWidth];
  float pval[layout::kMaxChunkWidth];
  bool any_pos = false;
  for (int64_t k = 0; k < c.nj; ++k) {
    pact[k] = false;
    pval[k] = Op::kNeutral;
  }
  for (int64_t g = s.gp0; g < s.gp0 + s.nps; ++g) {
    const int64_t ch = layout::pos_group_channel(t, g);
    if (!co.active[ch]) continue;
    any_pos = true;
    int64_t a, b;
    layout::group_positions(t, c, g, &a, &b);
    for (int64_t j = a; j < b; ++j) {
      pact[j - c.j0] = true;
      pval[j - c.j0] = co.value[ch];
    }
  }
  for (int64_t l = c.l0; l < c.l0 + c.nl; ++l) {
    const int64_t lch = layout::line_channel(t, l);
    const bool la = lch >= 0 && co.active[lch];
    if (!la && !any_pos) continue;
    const int64_t off = layout::element_index(t, l, c.j0);
    T* d = dst + off;
    const bool has_src = src != nullptr;
    const T* sp = has_src ? src + off : nullptr;
    if (la) {
      const float lv = co.value[lch];
      if (has_src) {
        for (int64_t k = 0; k < c.nj; ++k) {
          const float w = static_cast<float>(sp[k]);
          d[k] = static_cast<T>(Op::pos(Op::line(static_cast<float>(d[k]), w, lv), w, pval[k]));
        }
      } else {
        for (int64_t k = 0; k < c.nj; ++k)
          d[k] = static_cast<T>(Op::pos(Op::line(static_cast<float>(d[k]), 0.f, lv), 0.f, pval[k]));
      }
    } else if (has_src) {  // only the active positions change: a select keeps the others bit-identical
      for (int64_t k = 0; k < c.nj; ++k) {
        const T x = d[k];
        const T y = static_cast<T>(Op::pos(static_cast<float>(x), static_cast<float>(sp[k]), pval[k]));
        d[k] = pact[k] ? y : x;
      }
    } else {
      for (int64_t k = 0; k < c.nj; ++k) {
        const T x = d[k];
        const T y = static_cast<T>(Op::pos(static_cast<float>(x), 0.f, pval[k]));
        d[k] = pact[k] ? y : x;
      }
    }
  }
}

// Runs f(chunk index, tile, chunk) for every chunk, in parallel (one chunk per work item).
template <typename F>
inline void for_each_chunk(const Table& tab, F&& f) {
  at::parallel_for(0, tab.nchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Chunk c = layout::read_chunk(tab, i);
      f(i, layout::read_tile(tab, c.tile), c);
    }
  });
}

}  // namespace cpu
}  // namespace oneprune
