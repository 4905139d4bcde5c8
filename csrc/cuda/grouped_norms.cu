// grouped_norms, CUDA: two launches for the whole model, whatever its depth.
//   1. one block per chunk: partial sums of squares per slot (coalesced, 16-byte loads where
//      aligned; every element read once, counted for its row and its column channel);
//   2. one thread per channel: its slots in entry order (fixed), sum of squares and saliency.
// No atomics, no host synchronisation; capturable in a CUDA graph.
#include <torch/library.h>

#include "chunk_walk.cuh"

namespace oneprune {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads) norms_partial_kernel(const PtrTable tab, const int64_t* __restrict__ table,
                                                                  float* __restrict__ partial) {
  __shared__ SumsqShared sh;
  const Table v = layout::table_view(table);
  const Chunk c = layout::read_chunk(v, blockIdx.x);
  const Tile t = layout::read_tile(v, c.tile);
  dispatch_dtype(tab.dtype[t.tensor], [&](auto tag) {
    using T = decltype(tag);
    chunk_sumsq<T>(static_cast<const T*>(tab.ptr[t.tensor]), t, c, partial + c.slot0, sh);
  });
}

__global__ void __launch_bounds__(kThreads) norms_combine_kernel(const int64_t* __restrict__ table,
                                                                  const float* __restrict__ partial,
                                                                  float* __restrict__ sq, float* __restrict__ sal) {
  const Table v = layout::table_view(table);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c < v.nchan) layout::combine_channel(v, partial, c, sq + c, sal + c);
}

std::tuple<at::Tensor, at::Tensor> grouped_norms_cuda(at::TensorList tensors, const at::Tensor& table, int64_t nchan) {
  const LayoutCall call = check_grouped_norms(tensors, table, nchan);
  const Table& tab = call.table;
  const c10::cuda::CUDAGuard guard(call.device);
  auto opts = at::TensorOptions().dtype(at::kFloat).device(call.device);
  at::Tensor sq = at::empty({tab.nchan}, opts);
  at::Tensor sal = at::empty({tab.nchan}, opts);
  if (tab.nchan == 0) return {sq, sal};
  const PtrTable ptrs = make_table("grouped_norms", tensors);
  const at::Tensor dev = table_on(table, call.device);
  at::Tensor partial = at::empty({tab.nslots + 1}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (tab.nchunks > 0) {
    norms_partial_kernel<<<static_cast<unsigned>(tab.nchunks), kThreads, 0, stream>>>(
        ptrs, dev.const_data_ptr<int64_t>(), partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  norms_combine_kernel<<<static_cast<unsigned>((tab.nchan + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      dev.const_data_ptr<int64_t>(), partial.data_ptr<float>(), sq.data_ptr<float>(), sal.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sq, sal};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("grouped_norms", &cuda::grouped_norms_cuda); }

}  // namespace oneprune
