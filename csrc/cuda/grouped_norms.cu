// grouped_norms, CUDA kernel: one launch for the whole model, one block per channel.
#include <torch/library.h>

#include "segments.cuh"

namespace oneprune {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kBlock) grouped_norms_kernel(const PtrTable tab, const int64_t* __restrict__ segs,
                                                                const int64_t* __restrict__ seg_ptr, int64_t nphase,
                                                                int64_t nchan, float* __restrict__ sq,
                                                                float* __restrict__ sal) {
  __shared__ float shm[2][kBlock / 32];
  const int64_t c = blockIdx.x;
  float total = 0.f, weighted = 0.f;
  int64_t m = 0;
  for (int64_t p = 0; p < nphase; ++p) {
    const int64_t* row = seg_ptr + p * (nchan + 1);
    m += row[c + 1] - row[c];
    for (int64_t i = row[c]; i < row[c + 1]; ++i) {
      const Seg s = read_seg(segs, i);
      const float part = seg_sumsq_part(tab, s);
      const int64_t n = s.rows * s.len;
      total += part;
      weighted += n > 0 ? part * rsqrtf(static_cast<float>(n)) : 0.f;
    }
  }
  total = block_sum(total, shm[0]);
  weighted = block_sum(weighted, shm[1]);
  if (threadIdx.x == 0) {
    sq[c] = total;
    sal[c] = m > 0 ? weighted / static_cast<float>(m) : 0.f;
  }
}

std::tuple<at::Tensor, at::Tensor> grouped_norms_cuda(at::TensorList tensors, c10::IntArrayRef numels,
                                                      const at::Tensor& segs, const at::Tensor& seg_ptr,
                                                      const at::Tensor& runs) {
  check_layout("grouped_norms", tensors, numels, segs, seg_ptr, runs);
  const c10::cuda::CUDAGuard guard(segs.device());
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  auto opts = at::TensorOptions().dtype(at::kFloat).device(segs.device());
  at::Tensor sq = at::empty({nchan}, opts);
  at::Tensor sal = at::empty({nchan}, opts);
  if (nchan == 0) return {sq, sal};
  const PtrTable tab = make_table("grouped_norms", tensors);
  auto stream = c10::cuda::getCurrentCUDAStream();
  grouped_norms_kernel<<<static_cast<unsigned>(nchan), kBlock, 0, stream>>>(
      tab, segs.data_ptr<int64_t>(), seg_ptr.data_ptr<int64_t>(), nphase, nchan, sq.data_ptr<float>(),
      sal.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sq, sal};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("grouped_norms", &cuda::grouped_norms_cuda); }

}  // namespace oneprune
