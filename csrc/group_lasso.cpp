// group_lasso_grad_, CPU kernel: grad += reg * w / max(||g_c||, eps) for masked channels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

at::Tensor group_lasso_grad_cpu(at::TensorList tensors, at::TensorList grads, c10::IntArrayRef numels,
                                const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& mask,
                                const at::Tensor& reg, double eps) {
  check_layout("group_lasso_grad_", tensors, numels, segs, seg_ptr);
  check_grads("group_lasso_grad_", tensors, grads);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  check_mask("group_lasso_grad_", mask, nchan, segs.device());
  check_scalar("group_lasso_grad_", "reg", reg, segs.device());
  TORCH_CHECK_VALUE(eps > 0, "group_lasso_grad_: eps must be positive, got ", eps);
  const float reg_v = reg.item<float>();  // CPU tensor: no device sync involved
  const cpu::TensorTable wt(tensors), gt(grads);
  const int64_t* sg = segs.data_ptr<int64_t>();
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  const bool* mk = mask.data_ptr<bool>();
  std::vector<float> norms(static_cast<size_t>(nchan), 0.f);
  std::vector<float> coefs(static_cast<size_t>(nchan), 0.f);
  const float feps = static_cast<float>(eps);
  // Pass 1: the norm of every masked channel over all its segments (reads only).
  at::parallel_for(0, nchan, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (!mk[c]) continue;
      float ss = 0.f;
      for (int64_t p = 0; p < nphase; ++p) {
        const int64_t* row = sp + p * (nchan + 1);
        for (int64_t i = row[c]; i < row[c + 1]; ++i) ss += cpu::seg_sumsq(wt, cpu::read_seg(sg, i));
      }
      norms[c] = std::sqrt(ss);
      coefs[c] = reg_v / std::max(norms[c], feps);
    }
  });
  // Pass 2, one sweep per phase: segments within a phase are disjoint, so channels
  // update in parallel without races; an element shared by a row and a column
  // channel receives both terms, rows first.
  for (int64_t p = 0; p < nphase; ++p) {
    const int64_t* row = sp + p * (nchan + 1);
    at::parallel_for(0, nchan, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        if (!mk[c]) continue;
        const float coef = coefs[c];
        for (int64_t i = row[c]; i < row[c + 1]; ++i) {
          const cpu::Seg s = cpu::read_seg(sg, i);
          cpu::dispatch_dtype(wt.dtype[s.tensor], [&](auto tag) {
            using T = decltype(tag);
            const T* w = reinterpret_cast<const T*>(wt.ptr[s.tensor]) + s.base;
            T* g = reinterpret_cast<T*>(gt.ptr[s.tensor]) + s.base;
            for (int64_t r = 0; r < s.rows; ++r) {
              const T* wrow = w + r * s.stride;
              T* grow = g + r * s.stride;
              for (int64_t j = 0; j < s.len; ++j)
                grow[j] = static_cast<T>(static_cast<float>(grow[j]) + coef * static_cast<float>(wrow[j]));
            }
          });
        }
      }
    });
  }
  // Fixed-order reduction: the penalty is bit-identical run after run.
  double total = 0.0;
  for (int64_t c = 0; c < nchan; ++c) total += mk[c] ? static_cast<double>(norms[c]) : 0.0;
  return at::scalar_tensor(static_cast<float>(reg_v * total), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("group_lasso_grad_", &group_lasso_grad_cpu); }

}  // namespace oneprune
