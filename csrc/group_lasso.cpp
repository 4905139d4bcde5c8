// group_lasso_grad_, CPU kernel: grad += reg * w / max(||g_c||, eps) for masked channels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

at::Tensor group_lasso_grad_cpu(at::TensorList tensors, at::TensorList grads, c10::IntArrayRef numels,
                                const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs,
                                const at::Tensor& mask, const at::Tensor& reg, double eps) {
  check_group_lasso(tensors, grads, numels, segs, seg_ptr, runs, mask, reg, eps);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  const float reg_v = reg.item<float>();  // CPU tensor: no device sync involved
  const cpu::TensorTable wt(tensors), gt(grads);
  const int64_t nrun = runs.size(0);
  const int64_t* rn = runs.data_ptr<int64_t>();
  const bool* mk = mask.data_ptr<bool>();
  // Pass 1: sums of squares of the masked channels, per (run, channel), then per channel.
  const std::vector<int64_t> off = cpu::run_offsets(rn, nrun);
  std::vector<float> partial(static_cast<size_t>(off.back()));
  cpu::run_sumsq_partials(wt, rn, cpu::make_work(rn, 0, nrun), off, mk, partial.data());
  std::vector<float> norms(static_cast<size_t>(nchan), 0.f);
  for (int64_t i = 0; i < nrun; ++i) {
    const cpu::Run r = cpu::read_run(rn, i);
    for (int64_t k = 0; k < r.count; ++k) norms[r.chan0 + k] += partial[off[i] + k];
  }
  std::vector<float> coefs(static_cast<size_t>(nchan), 0.f);
  double total = 0.0;  // fixed-order sum: the penalty is bit-identical run after run
  const float feps = static_cast<float>(eps);
  for (int64_t c = 0; c < nchan; ++c) {
    if (!mk[c]) continue;
    norms[c] = std::sqrt(norms[c]);
    coefs[c] = reg_v / std::max(norms[c], feps);
    total += static_cast<double>(norms[c]);
  }
  // Pass 2, one sweep per phase: runs within a phase are disjoint, so work items update in
  // parallel without races; an element shared by a row and a column channel receives both
  // terms, rows first.
  for (const auto& pr : cpu::phase_ranges(rn, nrun, nphase)) {
    cpu::run_update<true>(gt, &wt, rn, cpu::make_work(rn, pr.first, pr.second), mk, coefs.data(),
                          [](float g, float w, float coef) { return g + coef * w; });
  }
  return at::scalar_tensor(static_cast<float>(reg_v * total), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("group_lasso_grad_", &group_lasso_grad_cpu); }

}  // namespace oneprune
