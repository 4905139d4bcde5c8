// grouped_norms, CPU kernel: per channel, fp32 sum of squares and saliency in one pass
// over the weights (row-major by runs; see segments_cpu.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

std::tuple<at::Tensor, at::Tensor> grouped_norms_cpu(at::TensorList tensors, c10::IntArrayRef numels,
                                                     const at::Tensor& segs, const at::Tensor& seg_ptr,
                                                     const at::Tensor& runs) {
  check_layout("grouped_norms", tensors, numels, segs, seg_ptr, runs);
  const int64_t nchan = seg_ptr.size(1) - 1;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(segs.device());
  at::Tensor sq = at::zeros({nchan}, opts);
  at::Tensor sal = at::zeros({nchan}, opts);
  const int64_t nrun = runs.size(0);
  const int64_t* rn = runs.data_ptr<int64_t>();
  const cpu::TensorTable tt(tensors);
  const std::vector<int64_t> off = cpu::run_offsets(rn, nrun);
  std::vector<float> partial(static_cast<size_t>(off.back()));
  cpu::run_sumsq_partials(tt, rn, cpu::make_work(rn, 0, nrun), off, nullptr, partial.data());
  // Combine per channel in run order (fixed): sum, and the saliency's mean over slices.
  float* sq_out = sq.data_ptr<float>();
  float* sal_out = sal.data_ptr<float>();
  std::vector<int32_t> m(static_cast<size_t>(nchan), 0);
  for (int64_t i = 0; i < nrun; ++i) {
    const cpu::Run r = cpu::read_run(rn, i);
    const float inv = r.seg_numel() > 0 ? 1.f / std::sqrt(static_cast<float>(r.seg_numel())) : 0.f;
    for (int64_t k = 0; k < r.count; ++k) {
      const float ss = partial[off[i] + k];
      sq_out[r.chan0 + k] += ss;
      sal_out[r.chan0 + k] += ss * inv;
      ++m[r.chan0 + k];
    }
  }
  for (int64_t c = 0; c < nchan; ++c) sal_out[c] = m[c] > 0 ? sal_out[c] / static_cast<float>(m[c]) : 0.f;
  return {sq, sal};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("grouped_norms", &grouped_norms_cpu); }

}  // namespace oneprune
