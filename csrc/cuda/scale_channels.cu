// scale_channels_, CUDA: one launch for the whole model, whatever its depth: one block per
// chunk holding a masked channel, w *= factor for the elements of masked channels (twice,
// rows first, where a masked row meets a masked column), skipping frozen tensors.
// No atomics, no host synchronisation; capturable in a CUDA graph. A non-finite device
// `factor` leaves the weights untouched (a host `factor` is refused).
#include <torch/library.h>

#include "chunk_walk.cuh"

namespace oneprune {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads) scale_kernel(const PtrTable tab, const int64_t* __restrict__ table,
                                                          const bool* __restrict__ mask,
                                                          const float* __restrict__ factor) {
  const float f = *factor;
  if (!isfinite(f)) return;
  const Table v = layout::table_view(table);
  const Chunk c = layout::read_chunk(v, blockIdx.x);
  const Tile t = layout::read_tile(v, c.tile);
  if (tab.frozen[t.tensor]) return;
  if (!block_chunk_has_masked(t, c, mask)) return;
  dispatch_dtype(tab.dtype[t.tensor], [&](auto tag) {
    using T = decltype(tag);
    chunk_update<T>(static_cast<T*>(tab.ptr[t.tensor]), static_cast<const T*>(nullptr), t, c, mask, nullptr, f,
                    [](float w, float, bool la, float lv, bool pa, float pv) {
                      const float y = la ? w * lv : w;
                      return pa ? y * pv : y;
                    });
  });
}

void scale_channels_cuda(at::TensorList tensors, const at::Tensor& table, const at::Tensor& mask,
                         const at::Tensor& factor, c10::IntArrayRef frozen) {
  const LayoutCall call = check_scale_channels(tensors, table, mask, factor, frozen);
  const Table& tab = call.table;
  if (tab.nchunks == 0) return;
  const c10::cuda::CUDAGuard guard(call.device);
  const PtrTable ptrs = make_table("scale_channels_", tensors, &call.frozen);
  const at::Tensor dev = table_on(table, call.device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  scale_kernel<<<static_cast<unsigned>(tab.nchunks), kThreads, 0, stream>>>(
      ptrs, dev.const_data_ptr<int64_t>(), mask.const_data_ptr<bool>(), factor.const_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("scale_channels_", &cuda::scale_channels_cuda); }

}  // namespace oneprune
