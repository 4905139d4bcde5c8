// group_lasso_grad_, CUDA: three launches for the whole model, whatever its depth.
//   1. one block per chunk holding a masked channel: partial sums of squares per slot;
//   2. one thread per channel: ||g_c|| from its slots in entry order and
//      coef_c = reg / max(||g_c||, eps) (0 for unmasked channels);
//   3. one block per chunk: grad += coef * w for the elements of masked channels (both terms,
//      rows first, where a masked row meets a masked column), skipping frozen tensors; one
//      extra block sums the norms in channel order into the penalty reg * sum ||g_c||.
// No atomics, no host synchronisation; capturable in a CUDA graph. A non-finite device `reg`
// leaves the grads untouched and makes the penalty non-finite (a host `reg` is refused).
#include <torch/library.h>

#include "chunk_walk.cuh"

namespace oneprune {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads) lasso_partial_kernel(const PtrTable wtab, const int64_t* __restrict__ table,
                                                                  const bool* __restrict__ mask,
                                                                  float* __restrict__ partial) {
  __shared__ SumsqShared sh;
  const Table v = layout::table_view(table);
  const Chunk c = layout::read_chunk(v, blockIdx.x);
  const Tile t = layout::read_tile(v, c.tile);
  if (!block_chunk_has_masked(t, c, mask)) return;  // its slots are read by no masked channel
  dispatch_dtype(wtab.dtype[t.tensor], [&](auto tag) {
    using T = decltype(tag);
    chunk_sumsq<T>(static_cast<const T*>(wtab.ptr[t.tensor]), t, c, partial + c.slot0, sh);
  });
}

__global__ void __launch_bounds__(kThreads) lasso_coef_kernel(const int64_t* __restrict__ table,
                                                               const float* __restrict__ partial,
                                                               const bool* __restrict__ mask,
                                                               const float* __restrict__ reg, float eps,
                                                               float* __restrict__ norms, float* __restrict__ coefs) {
  const Table v = layout::table_view(table);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= v.nchan) return;
  if (!mask[c]) {
    norms[c] = 0.f;
    coefs[c] = 0.f;
    return;
  }
  const float n = sqrtf(layout::combine_sumsq(v, partial, c));
  norms[c] = n;
  coefs[c] = *reg / fmaxf(n, eps);
}

__global__ void __launch_bounds__(kThreads) lasso_update_kernel(const PtrTable wtab, const PtrTable gtab,
                                                                 const int64_t* __restrict__ table,
                                                                 const bool* __restrict__ mask,
                                                                 const float* __restrict__ coefs,
                                                                 const float* __restrict__ norms,
                                                                 const float* __restrict__ reg,
                                                                 float* __restrict__ penalty) {
  const Table v = layout::table_view(table);
  if (blockIdx.x == v.nchunks) {  // the penalty, in a fixed order
    __shared__ float shm[kThreads / 32];
    float acc = 0.f;
    for (int64_t k = threadIdx.x; k < v.nchan; k += kThreads) acc += norms[k];
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) *penalty = *reg * acc;
    return;
  }
  if (!isfinite(*reg)) return;
  const Chunk c = layout::read_chunk(v, blockIdx.x);
  const Tile t = layout::read_tile(v, c.tile);
  if (gtab.frozen[t.tensor]) return;
  if (!block_chunk_has_masked(t, c, mask)) return;
  dispatch_dtype(wtab.dtype[t.tensor], [&](auto tag) {
    using T = decltype(tag);
    chunk_update<T>(static_cast<T*>(gtab.ptr[t.tensor]), static_cast<const T*>(wtab.ptr[t.tensor]), t, c, mask, coefs,
                    0.f, [](float g, float w, bool la, float lv, bool pa, float pv) {
                      const float y = la ? g + lv * w : g;
                      return pa ? y + pv * w : y;
                    });
  });
}

at::Tensor group_lasso_grad_cuda(at::TensorList tensors, at::TensorList grads, const at::Tensor& table,
                                 const at::Tensor& mask, const at::Tensor& reg, double eps, c10::IntArrayRef frozen) {
  const LayoutCall call = check_group_lasso(tensors, grads, table, mask, reg, eps, frozen);
  const Table& tab = call.table;
  const c10::cuda::CUDAGuard guard(call.device);
  auto fopts = at::TensorOptions().dtype(at::kFloat).device(call.device);
  at::Tensor penalty = at::empty({}, fopts);
  const PtrTable wptrs = make_table("group_lasso_grad_", tensors);
  const PtrTable gptrs = make_table("group_lasso_grad_", grads, &call.frozen);
  const at::Tensor dev = table_on(table, call.device);
  at::Tensor partial = at::empty({tab.nslots + 1}, fopts);
  at::Tensor work = at::empty({2, tab.nchan + 1}, fopts);  // norms, coefs
  float* norms = work.data_ptr<float>();
  float* coefs = norms + tab.nchan + 1;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* tp = dev.const_data_ptr<int64_t>();
  if (tab.nchunks > 0) {
    lasso_partial_kernel<<<static_cast<unsigned>(tab.nchunks), kThreads, 0, stream>>>(
        wptrs, tp, mask.const_data_ptr<bool>(), partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (tab.nchan > 0) {
    lasso_coef_kernel<<<static_cast<unsigned>((tab.nchan + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        tp, partial.data_ptr<float>(), mask.const_data_ptr<bool>(), reg.const_data_ptr<float>(),
        static_cast<float>(eps), norms, coefs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  lasso_update_kernel<<<static_cast<unsigned>(tab.nchunks + 1), kThreads, 0, stream>>>(
      wptrs, gptrs, tp, mask.const_data_ptr<bool>(), coefs, norms, reg.const_data_ptr<float>(),
      penalty.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return penalty;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) { m.impl("group_lasso_grad_", &cuda::group_lasso_grad_cuda); }

}  // namespace oneprune
