// compact_, CUDA kernel: in-place move of kept slices to the front of the storage.
// A single block sweeps the destination in ascending chunks; every thread reads its
// chunk's sources before any thread writes, and a destination never lies after its
// source, so no unread element is ever overwritten. No extra allocation.
#include <torch/library.h>

#include <vector>

#include "chunk_walk.cuh"

namespace oneprune {
namespace cuda {
namespace {

constexpr int kCompactBlock = 1024;
constexpr int kIlp = 4;

template <typename E>
__global__ void __launch_bounds__(kCompactBlock) compact_kernel(E* __restrict__ data, const int64_t* __restrict__ keep,
                                                                 int64_t outer, int64_t size, int64_t n, int64_t inner) {
  const int64_t total = outer * n * inner;
  const int64_t chunk = static_cast<int64_t>(kCompactBlock) * kIlp;
  for (int64_t start = 0; start < total; start += chunk) {
    E vals[kIlp];
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t d = start + k * kCompactBlock + threadIdx.x;
      if (d < total) {
        const int64_t b = d % inner;
        const int64_t aj = d / inner;
        const int64_t j = aj % n;
        const int64_t a = aj / n;
        vals[k] = data[(a * size + keep[j]) * inner + b];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t d = start + k * kCompactBlock + threadIdx.x;
      if (d < total) data[d] = vals[k];
    }
    __syncthreads();
  }
}

void launch_compact(const at::Tensor& tensor, const CompactShape& s, const at::Tensor& keep) {
  const int64_t n = keep.numel();
  if (n == s.size || tensor.numel() == 0) return;  // keep is sorted and unique: nothing moves
  const c10::cuda::CUDAGuard guard(tensor.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* k = keep.data_ptr<int64_t>();
  switch (tensor.element_size()) {
    case 1:
      compact_kernel<uint8_t><<<1, kCompactBlock, 0, stream>>>(static_cast<uint8_t*>(tensor.data_ptr()), k, s.outer,
                                                              s.size, n, s.inner);
      break;
    case 2:
      compact_kernel<uint16_t><<<1, kCompactBlock, 0, stream>>>(static_cast<uint16_t*>(tensor.data_ptr()), k,
                                                               s.outer, s.size, n, s.inner);
      break;
    case 4:
      compact_kernel<uint32_t><<<1, kCompactBlock, 0, stream>>>(static_cast<uint32_t*>(tensor.data_ptr()), k,
                                                               s.outer, s.size, n, s.inner);
      break;
    case 8:
      compact_kernel<uint64_t><<<1, kCompactBlock, 0, stream>>>(static_cast<uint64_t*>(tensor.data_ptr()), k,
                                                               s.outer, s.size, n, s.inner);
      break;
    default:
      TORCH_CHECK_VALUE(false, "compact_: unsupported element size ", tensor.element_size());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void compact_cuda(at::Tensor tensor, int64_t dim, const at::Tensor& keep) {
  launch_compact(tensor, check_compact(tensor, dim, keep), keep);
}

// One launch per entry, in order, on the current stream; a tensor named by several
// consecutive entries is compacted once per dim on its shrinking shape.
void compact_many_cuda(at::TensorList tensors, c10::IntArrayRef dims, at::TensorList keeps) {
  for (const auto& job : check_compact_many(tensors, dims, keeps)) {
    const at::Tensor& t = tensors[job.first];
    std::vector<int64_t> sz(t.sizes().begin(), t.sizes().end());
    for (size_t i = job.first; i < job.second; ++i) {
      const int64_t d = (dims[i] + t.dim()) % t.dim();
      launch_compact(t, compact_shape(sz, d), keeps[i]);
      sz[d] = keeps[i].numel();
    }
  }
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(oneprune, CUDA, m) {
  m.impl("compact_", &cuda::compact_cuda);
  m.impl("compact_many_", &cuda::compact_many_cuda);
}

}  // namespace oneprune
