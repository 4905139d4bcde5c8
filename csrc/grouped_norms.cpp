// grouped_norms, CPU kernel: per channel, fp32 sum of squares and saliency, reading every
// element once (an element of a row and a column channel counts for both). Step 1: per chunk,
// partial sums per slot (in parallel); step 2: per channel, its slots in entry order.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <memory>

#include "cpu_walk.h"
#include "oneprune.h"

namespace oneprune {
namespace {

std::tuple<at::Tensor, at::Tensor> grouped_norms_cpu(at::TensorList tensors, const at::Tensor& table, int64_t nchan) {
  const LayoutCall call = check_grouped_norms(tensors, table, nchan);
  const layout::Table& tab = call.table;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(call.device);
  at::Tensor sq = at::empty({tab.nchan}, opts);
  at::Tensor sal = at::empty({tab.nchan}, opts);
  const std::unique_ptr<float[]> partial(new float[static_cast<size_t>(tab.nslots) + 1]);
  const cpu::TensorTable tt(tensors);
  cpu::for_each_chunk(tab, [&](int64_t, const layout::Tile& t, const layout::Chunk& c) {
    cpu::dispatch_dtype(tt.dtype[t.tensor], [&](auto tag) {
      using T = decltype(tag);
      cpu::chunk_sumsq(reinterpret_cast<const T*>(tt.ptr[t.tensor]), t, c, partial.get() + c.slot0);
    });
  });
  float* sq_out = sq.data_ptr<float>();
  float* sal_out = sal.data_ptr<float>();
  at::parallel_for(0, tab.nchan, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) layout::combine_channel(tab, partial.get(), c, sq_out + c, sal_out + c);
  });
  return {sq, sal};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("grouped_norms", &grouped_norms_cpu); }

}  // namespace oneprune
