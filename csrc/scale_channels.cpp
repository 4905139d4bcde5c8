// scale_channels_, CPU kernel: w *= factor on every slice of the masked channels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

void scale_channels_cpu(at::TensorList tensors, c10::IntArrayRef numels, const at::Tensor& segs,
                        const at::Tensor& seg_ptr, const at::Tensor& runs, const at::Tensor& mask,
                        const at::Tensor& factor) {
  check_scale_channels(tensors, numels, segs, seg_ptr, runs, mask, factor);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  const std::vector<float> factors(static_cast<size_t>(nchan), factor.item<float>());
  const cpu::TensorTable tt(tensors);
  const int64_t nrun = runs.size(0);
  const int64_t* rn = runs.data_ptr<int64_t>();
  // One sweep per phase: runs within a phase are disjoint (see oneprune.h); an element
  // shared by two masked channels is scaled twice, rows first.
  for (const auto& pr : cpu::phase_ranges(rn, nrun, nphase)) {
    cpu::run_update<false>(tt, nullptr, rn, cpu::make_work(rn, pr.first, pr.second), mask.data_ptr<bool>(),
                           factors.data(), [](float w, float, float a) { return w * a; });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("scale_channels_", &scale_channels_cpu); }

}  // namespace oneprune
