// scale_channels_, CPU kernel: w *= factor on every segment of the masked channels.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "oneprune.h"
#include "segments_cpu.h"

namespace oneprune {
namespace {

void scale_channels_cpu(at::TensorList tensors, c10::IntArrayRef numels, const at::Tensor& segs,
                        const at::Tensor& seg_ptr, const at::Tensor& mask, const at::Tensor& factor) {
  check_layout("scale_channels_", tensors, numels, segs, seg_ptr);
  const int64_t nchan = seg_ptr.size(1) - 1;
  const int64_t nphase = seg_ptr.size(0);
  check_mask("scale_channels_", mask, nchan, segs.device());
  check_scalar("scale_channels_", "factor", factor, segs.device());
  const float f = factor.item<float>();
  const cpu::TensorTable tt(tensors);
  const int64_t* sg = segs.data_ptr<int64_t>();
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  const bool* mk = mask.data_ptr<bool>();
  // One sweep per phase: segments within a phase are disjoint (see oneprune.h); an
  // element shared by two masked channels is scaled twice, rows first.
  for (int64_t p = 0; p < nphase; ++p) {
    const int64_t* row = sp + p * (nchan + 1);
    at::parallel_for(0, nchan, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        if (!mk[c]) continue;
        for (int64_t i = row[c]; i < row[c + 1]; ++i) {
          const cpu::Seg s = cpu::read_seg(sg, i);
          cpu::for_each_row(tt.ptr[s.tensor], tt.dtype[s.tensor], s, [&](auto* r, int64_t n) {
            using T = std::remove_pointer_t<decltype(r)>;
            for (int64_t j = 0; j < n; ++j) r[j] = static_cast<T>(static_cast<float>(r[j]) * f);
          });
        }
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("scale_channels_", &scale_channels_cpu); }

}  // namespace oneprune
