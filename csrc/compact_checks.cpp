// Argument checks of compact_ / compact_many_, shared by their CPU and CUDA kernels.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "oneprune.h"

namespace oneprune {

CompactShape check_compact(const at::Tensor& tensor, int64_t dim, const at::Tensor& keep) {
  TORCH_CHECK_VALUE(tensor.dim() >= 1, "compact_: tensor must have at least one dimension");
  TORCH_CHECK_VALUE(tensor.is_contiguous(), "compact_: tensor must be contiguous");
  TORCH_CHECK_INDEX(dim >= -tensor.dim() && dim < tensor.dim(), "compact_: dim ", dim,
                    " is out of range for a tensor of ", tensor.dim(), " dimensions");
  if (dim < 0) dim += tensor.dim();
  TORCH_CHECK_VALUE(keep.scalar_type() == at::kLong && keep.dim() == 1 && keep.is_contiguous(),
                    "compact_: keep must be a contiguous int64 vector of indices");
  TORCH_CHECK_VALUE(keep.device() == tensor.device(), "compact_: keep is on ", keep.device(),
                    " but tensor is on ", tensor.device());
  TORCH_CHECK_VALUE(keep.numel() <= tensor.size(dim), "compact_: keep has ", keep.numel(),
                    " indices but dim ", dim, " has size ", tensor.size(dim));
  if (keep.device().is_cpu()) {
    // Checked here for host indices (O(n), no sync); the Python wrapper checks device indices.
    const int64_t* k = keep.data_ptr<int64_t>();
    for (int64_t j = 0; j < keep.numel(); ++j) {
      TORCH_CHECK_INDEX(k[j] >= 0 && k[j] < tensor.size(dim), "compact_: keep has indices outside [0, ",
                        tensor.size(dim), ") along dim ", dim);
      TORCH_CHECK_VALUE(j == 0 || k[j] > k[j - 1],
                        "compact_: keep must be sorted in increasing order, without duplicates");
    }
  }
  CompactShape s;
  s.dim = dim;
  s.size = tensor.size(dim);
  s.outer = 1;
  for (int64_t i = 0; i < dim; ++i) s.outer *= tensor.size(i);
  s.inner = 1;
  for (int64_t i = dim + 1; i < tensor.dim(); ++i) s.inner *= tensor.size(i);
  return s;
}

std::vector<std::pair<size_t, size_t>> check_compact_many(at::TensorList tensors, c10::IntArrayRef dims,
                                                          at::TensorList keeps) {
  TORCH_CHECK_VALUE(tensors.size() == dims.size() && tensors.size() == keeps.size(), "compact_many_: got ",
                    tensors.size(), " tensors, ", dims.size(), " dims and ", keeps.size(),
                    " keep vectors; pass one of each per entry");
  std::vector<std::pair<size_t, size_t>> jobs;
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_compact(tensors[i], dims[i], keeps[i]);
    // The same tensor: the same object, or the same non-empty memory and shape (two distinct
    // empty tensors may share a null data pointer).
    const bool same = i > 0 && (tensors[i].unsafeGetTensorImpl() == tensors[i - 1].unsafeGetTensorImpl() ||
                                (tensors[i].numel() > 0 && tensors[i].data_ptr() == tensors[i - 1].data_ptr() &&
                                 tensors[i].sizes() == tensors[i - 1].sizes()));
    if (same) {
      const int64_t nd = tensors[i].dim();
      TORCH_CHECK_VALUE((dims[i] + nd) % nd > (dims[i - 1] + nd) % nd, "compact_many_: entries ", i - 1,
                        " and ", i, " name the same tensor; give its dims in increasing order");
      jobs.back().second = i + 1;
    } else {
      jobs.emplace_back(i, i + 1);
    }
  }
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;
  spans.reserve(jobs.size());
  for (const auto& job : jobs) {
    const at::Tensor& t = tensors[job.first];
    const auto b = reinterpret_cast<uintptr_t>(t.data_ptr());
    spans.emplace_back(b, b + static_cast<uintptr_t>(t.numel()) * t.element_size());
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    TORCH_CHECK_VALUE(spans[i].first >= spans[i - 1].second || spans[i].first == spans[i].second ||
                          spans[i - 1].first == spans[i - 1].second,
                      "compact_many_: two of the tensors share memory; compact them in separate calls");
  return jobs;
}

CompactShape compact_shape(const std::vector<int64_t>& sz, int64_t d) {
  CompactShape s;
  s.dim = d;
  s.size = sz[d];
  s.outer = 1;
  for (int64_t i = 0; i < d; ++i) s.outer *= sz[i];
  s.inner = 1;
  for (size_t i = static_cast<size_t>(d) + 1; i < sz.size(); ++i) s.inner *= sz[i];
  return s;
}

}  // namespace oneprune
