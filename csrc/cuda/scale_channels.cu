// scale_channels_, CUDA kernel: one launch per phase (see oneprune.h), one block per
// channel; unmasked blocks exit. An element shared by two masked channels is scaled twice.
#include <torch/library.h>

#include "segments.cuh"

namespace oneprune {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kBlock) scale_channels_kernel(const PtrTable tab, const int64_t* __restrict__ segs,
                                                                 const int64_t* __restrict__ seg_ptr,  // this phase's row
                                                                 const bool* __restrict__ mask,
                                                                 const float* __restrict__ factor) {
  const int64_t c = blockIdx.x;
  if (!mask[c]) return;
  const float f = *factor;
  for (int64_t i = seg_ptr[c]; i < seg_ptr[c + 1]; ++i) {
    const Seg s = read_seg(segs, i);
    void* p = tab.ptr[s.tensor];
    const uint8_t dt = tab.dtype[s.tensor];
    const int64_t n = s.rows * s.len;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
      const int64_t idx = seg_index(s, e);
      store_f(p, dt, idx, load_f(p, dt, idx) * f);
    }
  }
}

void scale_channels_cuda(at::TensorList tensors, c10::IntArrayRef numels, const at::Tensor& segs,
                         const at::Tensor& seg_ptr, const at::Tensor& runs, const at::Tensor& mask, const at::Tensor& factor) {
  check_scale_channels(tensors, numels, segs, seg_ptr, runs, mask, factor);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  if (nchan == 0) return;
  const c10::cuda::CUDAGuard guard(segs.device());
  const PtrTable tab = make_table("scale_channels_", tensors);
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t p = 0; p < nphase; ++p) {
    scale_channels_kernel<<<static_cast<unsigned>(nchan), kBlock, 0, stream>>>(
        tab, segs.data_ptr<int64_t>(), seg_ptr.data_ptr<int64_t>() + p * (nchan + 1), mask.data_ptr<bool>(),
        factor.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("scale_channels_", &cuda::scale_channels_cuda); }

}  // namespace oneprune
