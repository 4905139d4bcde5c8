// CUDA helpers shared by the layout kernels: the pointer table passed by value as a
// kernel argument (no host-to-device copy, stable under CUDA-graph capture), typed
// loads/stores with fp32 math, and a deterministic block reduction.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../oneprune.h"

namespace oneprune {
namespace cuda {

// 1024 tensors: 9 KiB per table. Kernel arguments up to 32 KiB are allowed since
// CUDA 12.1 on Volta and newer, so group_lasso_grad_ can take two tables.
constexpr int kMaxTensors = 1024;
constexpr int kBlock = 256;

enum DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct PtrTable {
  void* ptr[kMaxTensors];
  uint8_t dtype[kMaxTensors];
};

inline PtrTable make_table(const char* what, at::TensorList ts) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(ts.size()) <= kMaxTensors, what, ": the layout has ",
                    ts.size(), " tensors; the CUDA kernels take at most ", kMaxTensors,
                    " (pass fewer groups or ignored_layers)");
  PtrTable t;
  for (size_t i = 0; i < ts.size(); ++i) {
    t.ptr[i] = ts[i].data_ptr();
    const auto st = ts[i].scalar_type();
    t.dtype[i] = st == at::kFloat ? kF32 : (st == at::kHalf ? kF16 : kBF16);
  }
  return t;
}

__device__ __forceinline__ float load_f(const void* p, uint8_t dt, int64_t i) {
  if (dt == kF32) return static_cast<const float*>(p)[i];
  if (dt == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ void store_f(void* p, uint8_t dt, int64_t i, float v) {
  if (dt == kF32) {
    static_cast<float*>(p)[i] = v;
  } else if (dt == kF16) {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  } else {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  }
}

struct Seg {
  int64_t tensor, base, rows, len, stride;
};

__device__ __forceinline__ Seg read_seg(const int64_t* segs, int64_t i) {
  const int64_t* s = segs + i * kSegCols;
  return Seg{s[kTensor], s[kBase], s[kRows], s[kRowLen], s[kRowStride]};
}

// Element e (0 <= e < rows*len) of a segment -> element index in its tensor.
__device__ __forceinline__ int64_t seg_index(const Seg& s, int64_t e) {
  const int64_t r = e / s.len;
  return s.base + r * s.stride + (e - r * s.len);
}

// fp32 sum of squares of one segment, this thread's share (strided by blockDim.x).
// Contiguous fp32/fp16/bf16 rows aligned to 16 bytes are read with 16-byte loads.
__device__ __forceinline__ float seg_sumsq_part(const PtrTable& tab, const Seg& s) {
  const void* p = tab.ptr[s.tensor];
  const uint8_t dt = tab.dtype[s.tensor];
  const int64_t n = s.rows * s.len;
  float acc = 0.f;
  const int esize = dt == kF32 ? 4 : 2;
  const char* start = static_cast<const char*>(p) + s.base * esize;
  if (s.rows == 1 && (reinterpret_cast<uintptr_t>(start) & 15) == 0) {
    const int per = 16 / esize;
    const int64_t nvec = n / per;
    const uint4* v = reinterpret_cast<const uint4*>(start);
    for (int64_t k = threadIdx.x; k < nvec; k += blockDim.x) {
      const uint4 q = v[k];
      if (dt == kF32) {
        const float* f = reinterpret_cast<const float*>(&q);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc += f[j] * f[j];
      } else if (dt == kF16) {
        const __half* h = reinterpret_cast<const __half*>(&q);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float x = __half2float(h[j]);
          acc += x * x;
        }
      } else {
        const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&q);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float x = __bfloat162float(h[j]);
          acc += x * x;
        }
      }
    }
    for (int64_t e = nvec * per + threadIdx.x; e < n; e += blockDim.x) {
      const float x = load_f(p, dt, s.base + e);
      acc += x * x;
    }
    return acc;
  }
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const float x = load_f(p, dt, seg_index(s, e));
    acc += x * x;
  }
  return acc;
}

// Deterministic sum over the block (fixed shuffle tree). Result valid in thread 0.
// `shm` must hold blockDim.x / 32 floats; callers __syncthreads() before reusing it.
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

}  // namespace cuda
}  // namespace oneprune
