// group_lasso_grad_, CPU kernel: grad += reg * w / max(||g_c||, eps) for masked channels.
// Step 1: partial sums of squares of the chunks holding a masked channel; step 2: per masked
// channel its norm and coefficient (entry order), and the penalty (channel order); step 3: the
// update, every element once (both terms where a masked row meets a masked column).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu_walk.h"
#include "oneprune.h"

namespace oneprune {
namespace {

at::Tensor group_lasso_grad_cpu(at::TensorList tensors, at::TensorList grads, const at::Tensor& table,
                                const at::Tensor& mask, const at::Tensor& reg, double eps, c10::IntArrayRef frozen) {
  const LayoutCall call = check_group_lasso(tensors, grads, table, mask, reg, eps, frozen);
  const layout::Table& tab = call.table;
  const float reg_v = reg.item<float>();  // a CPU tensor: no device sync involved
  const bool* mk = mask.data_ptr<bool>();
  const std::vector<int32_t> counts = cpu::mask_prefix(mk, tab.nchan);
  const cpu::TensorTable wt(tensors), gt(grads);
  const std::unique_ptr<float[]> partial(new float[static_cast<size_t>(tab.nslots) + 1]);
  cpu::for_each_chunk(tab, [&](int64_t, const layout::Tile& t, const layout::Chunk& c) {
    if (!layout::chunk_has_masked_counted(t, c, counts.data())) return;  // its slots are read by no masked channel
    cpu::dispatch_dtype(wt.dtype[t.tensor], [&](auto tag) {
      using T = decltype(tag);
      cpu::chunk_sumsq_masked(reinterpret_cast<const T*>(wt.ptr[t.tensor]), t, c, mk, partial.get() + c.slot0);
    });
  });
  std::vector<float> norms(static_cast<size_t>(tab.nchan), 0.f), coefs(static_cast<size_t>(tab.nchan), 0.f);
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, tab.nchan, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (!mk[c]) continue;
      norms[c] = std::sqrt(layout::combine_sumsq(tab, partial.get(), c));
      coefs[c] = reg_v / std::max(norms[c], feps);
    }
  });
  double total = 0.0;  // fixed order: the penalty is bit-identical run after run
  for (int64_t c = 0; c < tab.nchan; ++c) total += static_cast<double>(norms[c]);
  const cpu::Coefs co{mk, coefs.data()};
  cpu::for_each_chunk(tab, [&](int64_t, const layout::Tile& t, const layout::Chunk& c) {
    if (call.frozen[t.tensor] || !layout::chunk_has_masked_counted(t, c, counts.data())) return;
    cpu::dispatch_dtype(wt.dtype[t.tensor], [&](auto tag) {
      using T = decltype(tag);
      cpu::chunk_update<cpu::LassoOp>(reinterpret_cast<T*>(gt.ptr[t.tensor]),
                                      reinterpret_cast<const T*>(wt.ptr[t.tensor]), t, c, co);
    });
  });
  return at::scalar_tensor(static_cast<float>(reg_v * total), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("group_lasso_grad_", &group_lasso_grad_cpu); }

}  // namespace oneprune
