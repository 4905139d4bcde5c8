// grouped_norms, CPU kernel: per channel, fp32 sum of squares and saliency in one pass.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

std::tuple<at::Tensor, at::Tensor> grouped_norms_cpu(at::TensorList tensors, c10::IntArrayRef numels,
                                                     const at::Tensor& segs, const at::Tensor& seg_ptr) {
  check_layout("grouped_norms", tensors, numels, segs, seg_ptr);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  auto opts = at::TensorOptions().dtype(at::kFloat).device(segs.device());
  at::Tensor sq = at::empty({nchan}, opts);
  at::Tensor sal = at::empty({nchan}, opts);
  const cpu::TensorTable tt(tensors);
  const int64_t* sg = segs.data_ptr<int64_t>();
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  float* sq_out = sq.data_ptr<float>();
  float* sal_out = sal.data_ptr<float>();
  at::parallel_for(0, nchan, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      float total = 0.f, weighted = 0.f;
      int64_t m = 0;
      for (int64_t p = 0; p < nphase; ++p) {
        const int64_t* row = sp + p * (nchan + 1);
        m += row[c + 1] - row[c];
        for (int64_t i = row[c]; i < row[c + 1]; ++i) {
          const cpu::Seg s = cpu::read_seg(sg, i);
          const float ss = cpu::seg_sumsq(tt, s);
          total += ss;
          weighted += s.numel() > 0 ? ss / std::sqrt(static_cast<float>(s.numel())) : 0.f;
        }
      }
      sq_out[c] = total;
      sal_out[c] = m > 0 ? weighted / static_cast<float>(m) : 0.f;
    }
  });
  return {sq, sal};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("grouped_norms", &grouped_norms_cpu); }

}  // namespace oneprune
