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

// chunk_sumsq for the masked channels only (the slots of unmasked channels get 0): lines of
// masked line channels are summed whole, and only the masked position groups are visited.
template <typename T>
inline void chunk_sumsq_masked(const T* data, const Tile& t, const Chunk& c, const bool* mask, float* out) {
  const ChunkSlots s = layout::chunk_slots(t, c);
  float* lsum = out;
  float* psum = out + s.nls;
  for (int64_t k = 0; k < s.nls + s.nps; ++k) out[k] = 0.f;
  bool pact[layout::kMaxChunkWidth];
  int32_t rfirst[layout::kMaxChunkWidth], rlast[layout::kMaxChunkWidth], rslot[layout::kMaxChunkWidth];
  int64_t nranges = 0;
  for (int64_t k = 0; k < c.nj; ++k) pact[k] = false;
  if (s.nps > 0)
    layout::for_each_group(t.pchan0, t.pmod, s.gp0, s.nps, [&](int64_t g, int64_t ch) {
      if (!mask[ch]) return;
      int64_t a, b;
      layout::group_positions(t, c, g, &a, &b);
      for (int64_t j = a; j < b; ++j) pact[j - c.j0] = true;
      rfirst[nranges] = static_cast<int32_t>(a - c.j0);
      rlast[nranges] = static_cast<int32_t>(b - c.j0);
      rslot[nranges] = static_cast<int32_t>(g - s.gp0);
      ++nranges;
    });
  for (int64_t l = c.l0; l < c.l0 + c.nl; ++l) {
    const int64_t lch = layout::line_channel(t, l);
    const bool lm = lch >= 0 && mask[lch];
    if (!lm && nranges == 0) continue;
    const T* p = data + layout::element_index(t, l, c.j0);
    if (lm) lsum[layout::line_group(t, l) - s.gl0] += sumsq(p, c.nj);
    if (nranges == 0) continue;
    if (t.pdiv == 1) {
      for (int64_t k = 0; k < c.nj; ++k) {
        const float v = static_cast<float>(p[k]);
        psum[k] += pact[k] ? v * v : 0.f;
      }
    } else {
      for (int64_t r = 0; r < nranges; ++r) psum[rslot[r]] += sumsq(p + rfirst[r], rlast[r] - rfirst[r]);
    }
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
  // the active position groups as ranges [first, last) of chunk positions, with their value
  int32_t rfirst[layout::kMaxChunkWidth], rlast[layout::kMaxChunkWidth];
  float rval[layout::kMaxChunkWidth];
  int64_t nranges = 0;
  for (int64_t k = 0; k < c.nj; ++k) {
    pact[k] = false;
    pval[k] = Op::kNeutral;
  }
  if (s.nps > 0)
    layout::for_each_group(t.pchan0, t.pmod, s.gp0, s.nps, [&](int64_t g, int64_t ch) {
      if (!co.active[ch]) return;
      int64_t a, b;
      layout::group_positions(t, c, g, &a, &b);
      for (int64_t j = a; j < b; ++j) {
        pact[j - c.j0] = true;
        pval[j - c.j0] = co.value[ch];
      }
      rfirst[nranges] = static_cast<int32_t>(a - c.j0);
      rlast[nranges] = static_cast<int32_t>(b - c.j0);
      rval[nranges] = co.value[ch];
      ++nranges;
    });
  const bool has_src = src != nullptr;
  for (int64_t l = c.l0; l < c.l0 + c.nl; ++l) {
    const int64_t lch = layout::line_channel(t, l);
    const bool la = lch >= 0 && co.active[lch];
    if (!la && nranges == 0) continue;
    const int64_t off = layout::element_index(t, l, c.j0);
    T* d = dst + off;
    const T* sp = has_src ? src + off : nullptr;
    if (la) {  // the whole line changes
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
    } else if (t.pdiv == 1) {  // one position per channel: a branch-free select keeps the others
      for (int64_t k = 0; k < c.nj; ++k) {
        const T x = d[k];
        const T y = static_cast<T>(Op::pos(static_cast<float>(x), has_src ? static_cast<float>(sp[k]) : 0.f, pval[k]));
        d[k] = pact[k] ? y : x;
      }
    } else {  // only the active position groups are touched
      for (int64_t r = 0; r < nranges; ++r) {
        const float v = rval[r];
        for (int64_t k = rfirst[r]; k < rlast[r]; ++k)
          d[k] = static_cast<T>(Op::pos(static_cast<float>(d[k]), has_src ? static_cast<float>(sp[k]) : 0.f, v));
      }
    }
  }
}

// prefix[i] = number of set entries among mask[0 .. i-1] (for chunk_has_masked_counted).
inline std::vector<int32_t> mask_prefix(const bool* mask, int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n) + 1, 0);
  for (int64_t i = 0; i < n; ++i) p[i + 1] = p[i] + (mask[i] ? 1 : 0);
  return p;
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
