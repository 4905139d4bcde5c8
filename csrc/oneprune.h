// oneprune_ext: shared declarations for the C++ op schemas and CPU kernels.
//
// The channel layout (built in oneprune_ext/layout.py) describes every channel of
// every group as a list of *segments*. A segment is a 2-D strided chunk of one
// tensor: `nrows` rows of `row_len` contiguous elements, consecutive rows
// `row_stride` elements apart, starting at element `base` of the tensor.
//   segs    int64 [nseg, 5]: (tensor index, base, nrows, row_len, row_stride)
//   seg_ptr int64 [P, nchan+1]: in phase p, channel c owns segments
//           seg_ptr[p][c] .. seg_ptr[p][c+1]-1 (segs are sorted by phase, then channel)
// Phases exist because one weight element belongs to two channels (row o of a conv
// is output channel o, column i is input channel i). Segments of one phase never
// overlap, so kernels that write (group lasso, scaling) run one pass per phase with
// every channel in parallel, deterministically and without atomics; phase p holds the
// segments along the p-th distinct tensor dimension (rows first, then columns).
// The same segments, grouped per slice (the CPU kernels walk these, row-major, so a
// column slice is read in whole contiguous rows rather than one strided column at a time):
//   runs    int64 [nrun, 8]: (tensor, first global channel, channel count, base of the first
//           channel, rows, row_len, row_stride, phase); channel chan0+k's segment starts at
//           base + k*row_len. Runs are sorted by phase; runs of one phase never overlap.
// The data pointers themselves are read from the tensor list at every call, so a
// re-allocated parameter is never read through a stale pointer.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

namespace oneprune {

constexpr int64_t kSegCols = 5;
enum SegCol : int64_t { kTensor = 0, kBase = 1, kRows = 2, kRowLen = 3, kRowStride = 4 };
constexpr int64_t kRunCols = 8;
enum RunCol : int64_t {
  kRunTensor = 0, kRunChan0 = 1, kRunCount = 2, kRunBase = 3, kRunRows = 4, kRunLen = 5, kRunStride = 6,
  kRunPhase = 7
};

// Validates a (tensors, numels, segs, seg_ptr) quadruple. `what` names the op in
// messages. Checks devices, dtypes (fp32/fp16/bf16), contiguity and that every
// tensor still has the element count the layout was built for.
void check_layout(const char* what, at::TensorList tensors, c10::IntArrayRef numels,
                  const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs);

// Checks that `grads` matches `tensors` one to one (shape, dtype, device, contiguity).
void check_grads(const char* what, at::TensorList tensors, at::TensorList grads);

// Checks a per-channel bool mask and a 0-d fp32 scalar tensor on the layout's device.
void check_mask(const char* what, const at::Tensor& mask, int64_t nchan,
                const at::Device& device);
void check_scalar(const char* what, const char* name, const at::Tensor& s,
                  const at::Device& device);

// All argument checks of group_lasso_grad_ / scale_channels_ (shared by CPU and CUDA kernels).
void check_group_lasso(at::TensorList tensors, at::TensorList grads, c10::IntArrayRef numels,
                       const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs,
                       const at::Tensor& mask, const at::Tensor& reg, double eps);
void check_scale_channels(at::TensorList tensors, c10::IntArrayRef numels, const at::Tensor& segs,
                          const at::Tensor& seg_ptr, const at::Tensor& runs, const at::Tensor& mask,
                          const at::Tensor& factor);

// Checks the arguments of compact_ and returns (outer, size, inner) of `tensor`
// seen as [outer, size(dim), inner].
struct CompactShape {
  int64_t outer, size, inner, dim;
};
CompactShape check_compact(const at::Tensor& tensor, int64_t dim, const at::Tensor& keep);

// Checks the lists of compact_many_ and returns its jobs: ranges [first, last) of consecutive
// entries naming the same tensor (compacted along all their dims, which must increase). The
// jobs' tensors must not share memory. Also checks every (tensor, dim, keep) entry.
std::vector<std::pair<size_t, size_t>> check_compact_many(at::TensorList tensors, c10::IntArrayRef dims,
                                                          at::TensorList keeps);

// The [outer, size, inner] view of sizes `sz` around dim d (for successive compactions).
CompactShape compact_shape(const std::vector<int64_t>& sz, int64_t d);

}  // namespace oneprune
