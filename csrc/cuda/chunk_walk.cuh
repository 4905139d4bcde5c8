// CUDA-only parts of the layout kernels: the tensor pointer table passed by value (no
// host-to-device copy, stable under CUDA-graph capture), typed 16-byte vector loads and stores
// with fp32 math, the deterministic group and block reductions, and the per-chunk walk of one
// block. The index math (which element, which channel, which slot, which lane covers what) is
// shared with the CPU kernels: csrc/layout_index.h. csrc/KERNELS.md says which part is which.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../layout_index.h"
#include "../oneprune.h"

namespace oneprune {
namespace cuda {

using layout::Chunk;
using layout::ChunkSlots;
using layout::Table;
using layout::Tile;

constexpr int kThreads = 256;
// 1024 tensors: 10 KiB per pointer table. Kernel arguments up to 32 KiB are allowed since
// CUDA 12.1 on Volta and newer, so group_lasso_grad_ can take two tables.
constexpr int kMaxTensors = 1024;

enum DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct PtrTable {
  void* ptr[kMaxTensors];
  uint8_t dtype[kMaxTensors];
  uint8_t frozen[kMaxTensors];
};

// Pointers of `ts` (undefined entries: null) and the frozen flags, by value for a kernel.
inline PtrTable make_table(const char* what, at::TensorList ts, const std::vector<uint8_t>* frozen = nullptr) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(ts.size()) <= kMaxTensors, what, ": the layout has ", ts.size(),
                    " tensors; the CUDA kernels take at most ", kMaxTensors,
                    " (pass fewer groups or ignored_layers)");
  PtrTable t;
  for (size_t i = 0; i < ts.size(); ++i) {
    const bool skip = frozen != nullptr && (*frozen)[i];
    t.ptr[i] = skip || !ts[i].defined() ? nullptr : ts[i].data_ptr();
    const auto st = ts[i].defined() ? ts[i].scalar_type() : at::kFloat;
    t.dtype[i] = st == at::kFloat ? kF32 : (st == at::kHalf ? kF16 : kBF16);
    t.frozen[i] = skip ? 1 : 0;
  }
  return t;
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Calls f(T{}) with the element type of dtype `dt` (uniform per block).
template <typename F>
__device__ __forceinline__ void dispatch_dtype(uint8_t dt, F&& f) {
  if (dt == kF32)
    f(float{});
  else if (dt == kF16)
    f(__half{});
  else
    f(__nv_bfloat16{});
}

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

// Where a block is in a chunk: the lane arithmetic of layout_index.h plus whether the chunk's
// lines start on 16-byte boundaries (then full vectors are read and written as one uint4).
struct Walk {
  layout::Lanes lanes;
  layout::LanePlace place;
  bool aligned;
};

template <typename T>
__device__ __forceinline__ Walk make_walk(const void* data, const Tile& t, const Chunk& c) {
  Walk w;
  w.lanes = layout::chunk_lanes(c.nj, kVec<T>, kThreads);
  w.place = layout::lane_place(w.lanes, threadIdx.x);
  const uintptr_t first = reinterpret_cast<uintptr_t>(static_cast<const T*>(data) + layout::element_index(t, c.l0, c.j0));
  w.aligned = (first % 16) == 0 && (c.nl == 1 || (t.stride * static_cast<int64_t>(sizeof(T))) % 16 == 0);
  return w;
}

// This lane's vector of line l (positions j0 + vp*vec ..): fp32 values, 0 past the chunk.
template <typename T>
__device__ __forceinline__ void load_vec(const T* data, const Tile& t, const Chunk& c, const Walk& w, int64_t l,
                                         float (&x)[kVec<T>]) {
  const int64_t j = w.place.vp * kVec<T>;
  const T* p = data + layout::element_index(t, l, c.j0 + j);
  if (w.aligned && j + kVec<T> <= c.nj) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&q);
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) x[v] = to_f(e[v]);
  } else {
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) x[v] = j + v < c.nj ? to_f(p[v]) : 0.f;
  }
}

// Stores the lane's vector back (only positions inside the chunk whose `write` flag is set).
template <typename T>
__device__ __forceinline__ void store_vec(T* data, const Tile& t, const Chunk& c, const Walk& w, int64_t l,
                                          const float (&y)[kVec<T>], const bool (&write)[kVec<T>]) {
  const int64_t j = w.place.vp * kVec<T>;
  T* p = data + layout::element_index(t, l, c.j0 + j);
  bool all = w.aligned && j + kVec<T> <= c.nj;
#pragma unroll
  for (int v = 0; v < kVec<T>; ++v) all = all && write[v];
  if (all) {
    uint4 q;
    T* e = reinterpret_cast<T*>(&q);
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) e[v] = from_f<T>(y[v]);
    *reinterpret_cast<uint4*>(p) = q;
  } else {
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v)
      if (j + v < c.nj && write[v]) p[v] = from_f<T>(y[v]);
  }
}

// Sum over the `group` lanes of a lane group (fixed shuffle tree; result in lane li == 0).
// Every lane of the warp must call it (group is uniform per block).
__device__ __forceinline__ float group_sum(float v, int group) {
  for (int o = group / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o, group);
  return v;
}

// Deterministic sum over the block (fixed shuffle tree). Result valid in thread 0.
// `shm` must hold kThreads / 32 floats; callers __syncthreads() before reusing it.
__device__ __forceinline__ float block_sum(float v, float* shm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shm[threadIdx.x] : 0.f;
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

// Whether any channel of the chunk is set in `mask` (all threads get the answer).
__device__ __forceinline__ bool block_chunk_has_masked(const Tile& t, const Chunk& c, const bool* mask) {
  const ChunkSlots s = layout::chunk_slots(t, c);
  bool any = false;
  for (int64_t k = threadIdx.x; k < s.nls && !any; k += kThreads) any = mask[layout::line_group_channel(t, s.gl0 + k)];
  for (int64_t k = threadIdx.x; k < s.nps && !any; k += kThreads) any = mask[layout::pos_group_channel(t, s.gp0 + k)];
  return __syncthreads_or(any) != 0;
}

// Shared memory of chunk_sumsq: per (line, group) sums and per (line offset, position) sums.
struct SumsqShared {
  float line[layout::kShLineFloats];
  float pos[kThreads * 8];
};

// Partial sums of squares of one chunk into out[0 .. nls + nps), as cpu::chunk_sumsq: each
// lane accumulates its positions over the chunk's lines in registers; line sums are reduced
// per lane group with shuffles; both are then combined per slot in a fixed order.
template <typename T>
__device__ void chunk_sumsq(const T* data, const Tile& t, const Chunk& c, float* out, SumsqShared& sh) {
  const ChunkSlots s = layout::chunk_slots(t, c);
  const Walk w = make_walk<T>(data, t, c);
  const layout::Lanes& L = w.lanes;
  const layout::LanePlace& P = w.place;
  float acc[kVec<T>];
#pragma unroll
  for (int v = 0; v < kVec<T>; ++v) acc[v] = 0.f;
  const int64_t npass = (c.nl + L.lpp - 1) / L.lpp;
  for (int64_t pass = 0; pass < npass; ++pass) {
    const int64_t i = pass * L.lpp + P.lo;
    const bool act = P.active && i < c.nl;
    float x[kVec<T>];
    if (act) {
      load_vec(data, t, c, w, c.l0 + i, x);
    } else {
#pragma unroll
      for (int v = 0; v < kVec<T>; ++v) x[v] = 0.f;
    }
    float ls = 0.f;
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) {
      const float q = x[v] * x[v];
      acc[v] += q;
      ls += q;
    }
    if (s.nls > 0) {  // uniform: every lane reaches the shuffles
      ls = group_sum(ls, static_cast<int>(L.group));
      if (P.li == 0 && P.lo < L.lpp && i < c.nl) sh.line[i * L.segs + P.seg] = ls;
    }
  }
  if (s.nps > 0 && P.active) {
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) sh.pos[P.lo * L.nvec * kVec<T> + P.vp * kVec<T> + v] = acc[v];
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < s.nls; k += kThreads) {
    int64_t a, b;
    layout::group_lines(t, c, s.gl0 + k, &a, &b);
    float sum = 0.f;
    for (int64_t l = a; l < b; ++l)
      for (int64_t g = 0; g < L.segs; ++g) sum += sh.line[(l - c.l0) * L.segs + g];
    out[k] = sum;
  }
  const int64_t row = L.nvec * kVec<T>;
  for (int64_t k = threadIdx.x; k < s.nps; k += kThreads) {
    int64_t a, b;
    layout::group_positions(t, c, s.gp0 + k, &a, &b);
    float sum = 0.f;
    for (int64_t j = a; j < b; ++j)
      for (int64_t lo = 0; lo < L.lpp; ++lo) sum += sh.pos[lo * row + (j - c.j0)];
    out[s.nls + k] = sum;
  }
}

// Updates the elements of one chunk that belong to an active line or position channel, as
// cpu::chunk_update: x = op(x, s, line_active, line_value, pos_active, pos_value) in fp32.
template <typename T, typename Op>
__device__ void chunk_update(T* dst, const T* src, const Tile& t, const Chunk& c, const bool* active,
                             const float* value, float uniform_value, Op op) {
  const Walk w = make_walk<T>(dst, t, c);
  const layout::LanePlace& P = w.place;
  if (!P.active) return;
  bool pa[kVec<T>];
  float pv[kVec<T>];
  bool any_pos = false;
#pragma unroll
  for (int v = 0; v < kVec<T>; ++v) {
    const int64_t j = P.vp * kVec<T> + v;
    const int64_t ch = j < c.nj ? layout::pos_channel(t, c.j0 + j) : -1;
    pa[v] = ch >= 0 && active[ch];
    pv[v] = pa[v] ? (value ? value[ch] : uniform_value) : 0.f;
    any_pos = any_pos || pa[v];
  }
  for (int64_t i = P.lo; i < c.nl; i += w.lanes.lpp) {
    const int64_t l = c.l0 + i;
    const int64_t lch = layout::line_channel(t, l);
    const bool la = lch >= 0 && active[lch];
    if (!la && !any_pos) continue;
    const float lv = la ? (value ? value[lch] : uniform_value) : 0.f;
    float x[kVec<T>], sv[kVec<T>], y[kVec<T>];
    bool write[kVec<T>];
    load_vec(dst, t, c, w, l, x);
    if (src != nullptr) {
      load_vec(src, t, c, w, l, sv);
    } else {
#pragma unroll
      for (int v = 0; v < kVec<T>; ++v) sv[v] = 0.f;
    }
#pragma unroll
    for (int v = 0; v < kVec<T>; ++v) {
      y[v] = op(x[v], sv[v], la, lv, pa[v], pv[v]);
      write[v] = la || pa[v];
    }
    store_vec(dst, t, c, w, l, y, write);
  }
}

}  // namespace cuda
}  // namespace oneprune
