// group_lasso_grad_, CUDA kernels. Launch 1, one block per channel: ||g_c|| over all
// phases, coef_c = reg / max(||g_c||, eps), the update of phase 0 (rows), and, in the
// last block to finish, the penalty summed over channels in a fixed order (an integer
// counter picks that block; no float atomics, no host sync). Launches 2..P update the
// remaining phases (columns) with the stored coefficients; see oneprune.h for phases.
#include <torch/library.h>

#include "segments.cuh"

namespace oneprune {
namespace cuda {
namespace {

// grad += coef * w over the segments seg_ptr_row[c] .. seg_ptr_row[c+1]-1, block-strided.
__device__ __forceinline__ void axpy_segments(const PtrTable& wtab, const PtrTable& gtab, const int64_t* segs,
                                              int64_t s0, int64_t s1, float coef) {
  for (int64_t i = s0; i < s1; ++i) {
    const Seg s = read_seg(segs, i);
    const void* w = wtab.ptr[s.tensor];
    void* g = gtab.ptr[s.tensor];
    const uint8_t dt = wtab.dtype[s.tensor];
    const int64_t n = s.rows * s.len;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
      const int64_t idx = seg_index(s, e);
      store_f(g, dt, idx, load_f(g, dt, idx) + coef * load_f(w, dt, idx));
    }
  }
}

__global__ void __launch_bounds__(kBlock) lasso_norm_kernel(
    const PtrTable wtab, const PtrTable gtab, const int64_t* __restrict__ segs, const int64_t* __restrict__ seg_ptr,
    int64_t nphase, int64_t nchan, const bool* __restrict__ mask, const float* __restrict__ reg, float eps,
    float* __restrict__ norms, float* __restrict__ coefs, unsigned int* __restrict__ done,
    float* __restrict__ penalty) {
  __shared__ float shm[kBlock / 32];
  __shared__ float coef_s;
  __shared__ bool last_s;
  const int64_t c = blockIdx.x;
  const float r = *reg;
  if (mask[c]) {
    float ss = 0.f;
    for (int64_t p = 0; p < nphase; ++p) {
      const int64_t* row = seg_ptr + p * (nchan + 1);
      for (int64_t i = row[c]; i < row[c + 1]; ++i) ss += seg_sumsq_part(wtab, read_seg(segs, i));
    }
    ss = block_sum(ss, shm);
    if (threadIdx.x == 0) {
      const float norm = sqrtf(ss);
      norms[c] = norm;
      coef_s = r / fmaxf(norm, eps);
      coefs[c] = coef_s;
    }
    __syncthreads();
    axpy_segments(wtab, gtab, segs, seg_ptr[c], seg_ptr[c + 1], coef_s);
  } else if (threadIdx.x == 0) {
    norms[c] = 0.f;
    coefs[c] = 0.f;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_s = atomicAdd(done, 1u) == static_cast<unsigned int>(gridDim.x - 1);
  __syncthreads();
  if (!last_s) return;
  __threadfence();
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < nchan; k += blockDim.x) acc += static_cast<volatile float*>(norms)[k];
  acc = block_sum(acc, shm);
  if (threadIdx.x == 0) {
    *penalty = r * acc;
    *done = 0u;
  }
}

__global__ void __launch_bounds__(kBlock) lasso_update_kernel(const PtrTable wtab, const PtrTable gtab,
                                                               const int64_t* __restrict__ segs,
                                                               const int64_t* __restrict__ seg_ptr_row,
                                                               const bool* __restrict__ mask,
                                                               const float* __restrict__ coefs) {
  const int64_t c = blockIdx.x;
  if (!mask[c]) return;
  axpy_segments(wtab, gtab, segs, seg_ptr_row[c], seg_ptr_row[c + 1], coefs[c]);
}

at::Tensor group_lasso_grad_cuda(at::TensorList tensors, at::TensorList grads, c10::IntArrayRef numels,
                                 const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs, const at::Tensor& mask,
                                 const at::Tensor& reg, double eps) {
  check_group_lasso(tensors, grads, numels, segs, seg_ptr, runs, mask, reg, eps);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  const c10::cuda::CUDAGuard guard(segs.device());
  auto fopts = at::TensorOptions().dtype(at::kFloat).device(segs.device());
  at::Tensor penalty = at::zeros({}, fopts);
  if (nchan == 0) return penalty;
  at::Tensor work = at::empty({2, nchan}, fopts);  // norms, coefs
  at::Tensor done = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(segs.device()));
  const PtrTable wtab = make_table("group_lasso_grad_", tensors);
  const PtrTable gtab = make_table("group_lasso_grad_", grads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  float* norms = work.data_ptr<float>();
  float* coefs = norms + nchan;
  lasso_norm_kernel<<<static_cast<unsigned>(nchan), kBlock, 0, stream>>>(
      wtab, gtab, segs.data_ptr<int64_t>(), sp, nphase, nchan, mask.data_ptr<bool>(), reg.data_ptr<float>(),
      static_cast<float>(eps), norms, coefs, reinterpret_cast<unsigned int*>(done.data_ptr<int>()),
      penalty.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t p = 1; p < nphase; ++p) {
    lasso_update_kernel<<<static_cast<unsigned>(nchan), kBlock, 0, stream>>>(
        wtab, gtab, segs.data_ptr<int64_t>(), sp + p * (nchan + 1), mask.data_ptr<bool>(), coefs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return penalty;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("group_lasso_grad_", &cuda::group_lasso_grad_cuda); }

}  // namespace oneprune
