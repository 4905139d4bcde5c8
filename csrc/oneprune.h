// oneprune_ext: host-side declarations shared by the op schemas (ops.cpp), the table checks
// (table_check.cpp) and the CPU and CUDA kernels.
//
// The layout ops take the model's tensors and one int64 *table* on the host describing them
// (csrc/layout_index.h documents its sections). Before a kernel touches memory, the host checks
//   * the table itself, in full, the first time it is seen and again whenever it is modified
//     (cached per table object and version: later calls cost one hash lookup), and
//   * the tensors against the table at every call: count, device, dtype, and the shape and
//     memory order the layout was built for (a stale layout is refused, never misread).
// The CUDA kernels read a device copy of the table, made from the checked host table on the
// first call on each device and kept while the host table lives.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "layout_index.h"

namespace oneprune {

// The checked table (host pointers into `table`, which must stay alive while they are used).
layout::Table checked_table(const char* what, const at::Tensor& table);

// The device copy of a checked table (the table itself for a CPU device). Not for use while
// a CUDA graph is being captured unless an earlier call on the same device made the copy.
at::Tensor table_on(const at::Tensor& table, const at::Device& device);

// Checks `tensors` against the table: one per table tensor, all defined, on one device,
// float32 / float16 / bfloat16, with the sizes and memory order the table was built for.
// Returns the device of the tensors (`fallback` if there are none).
at::Device check_tensors(const char* what, at::TensorList tensors, const layout::Table& t,
                         const at::Device& fallback);

// Per-tensor flags from the `frozen` index list (tensors the writing ops must skip).
std::vector<uint8_t> frozen_flags(const char* what, c10::IntArrayRef frozen, int64_t ntensors);

// Checks that grads[i] matches tensors[i] (shape, strides, dtype, device) for every tensor
// that is not frozen; a frozen tensor's entry is ignored.
void check_grads(const char* what, at::TensorList tensors, at::TensorList grads,
                 const std::vector<uint8_t>& frozen);

// Checks a per-channel bool mask and a one-element fp32 tensor on the tensors' device.
void check_mask(const char* what, const at::Tensor& mask, int64_t nchan, const at::Device& device);
void check_scalar(const char* what, const char* name, const at::Tensor& s, const at::Device& device);

// All argument checks of the three layout ops (shared by the CPU and CUDA kernels).
struct LayoutCall {
  layout::Table table;        // host view of the checked table
  at::Device device;          // the tensors' device
  std::vector<uint8_t> frozen;  // per tensor: skipped by the writing ops
};
LayoutCall check_grouped_norms(at::TensorList tensors, const at::Tensor& table, int64_t nchan);
LayoutCall check_group_lasso(at::TensorList tensors, at::TensorList grads, const at::Tensor& table,
                             const at::Tensor& mask, const at::Tensor& reg, double eps, c10::IntArrayRef frozen);
LayoutCall check_scale_channels(at::TensorList tensors, const at::Tensor& table, const at::Tensor& mask,
                                const at::Tensor& factor, c10::IntArrayRef frozen);

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
