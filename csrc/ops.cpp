// Op schemas (defined once here) and the argument checks shared by CPU and CUDA kernels.
#include <Python.h>
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "oneprune.h"

#include <algorithm>
#include <utility>
#include <vector>

// Importing the Python module `oneprune_ext._C` registers the ops below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                          nullptr,  nullptr,  nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace oneprune {

namespace {
bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}
}  // namespace

void check_layout(const char* what, at::TensorList tensors, c10::IntArrayRef numels,
                  const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs) {
  TORCH_CHECK_VALUE(tensors.size() == numels.size(), what, ": got ", tensors.size(),
                    " tensors but the layout describes ", numels.size(),
                    "; rebuild the ChannelLayout");
  TORCH_CHECK_VALUE(segs.scalar_type() == at::kLong && segs.dim() == 2 && segs.size(1) == kSegCols &&
                        segs.is_contiguous(),
                    what, ": segs must be a contiguous int64 tensor of shape [nseg, 5]");
  TORCH_CHECK_VALUE(seg_ptr.scalar_type() == at::kLong && seg_ptr.dim() == 2 && seg_ptr.size(0) >= 1 &&
                        seg_ptr.size(1) >= 1 && seg_ptr.is_contiguous(),
                    what, ": seg_ptr must be a contiguous int64 tensor of shape [phases, nchan+1]");
  TORCH_CHECK_VALUE(runs.scalar_type() == at::kLong && runs.dim() == 2 && runs.size(1) == kRunCols &&
                        runs.is_contiguous(),
                    what, ": runs must be a contiguous int64 tensor of shape [nrun, 8]");
  TORCH_CHECK_VALUE(segs.device() == seg_ptr.device() && segs.device() == runs.device(), what,
                    ": segs, seg_ptr and runs must be on the same device");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), what, ": tensor ", i, " is undefined");
    TORCH_CHECK_VALUE(t.device() == segs.device(), what, ": tensor ", i, " is on ", t.device(),
                      " but the layout is on ", segs.device(),
                      "; move the model before building the layout (or call layout.rebuild())");
    TORCH_CHECK_VALUE(supported_dtype(t.scalar_type()), what, ": tensor ", i, " has dtype ",
                      t.scalar_type(), "; only float32, float16 and bfloat16 are supported");
    TORCH_CHECK_VALUE(t.is_contiguous(), what, ": tensor ", i,
                      " is not contiguous; call .contiguous() on the parameter's data");
    TORCH_CHECK_VALUE(t.numel() == numels[i], what, ": tensor ", i, " has ", t.numel(),
                      " elements but the layout was built for ", numels[i],
                      "; its shape changed behind the layout: call layout.rebuild()");
  }
  if (runs.device().is_cpu()) {
    // The CPU kernels address memory through the runs: check every run stays inside its
    // tensor and the channel range (O(runs); the CUDA tables are validated by ChannelLayout).
    const int64_t nchan = seg_ptr.size(1) - 1;
    const int64_t* rn = runs.data_ptr<int64_t>();
    for (int64_t i = 0; i < runs.size(0); ++i) {
      const int64_t* r = rn + i * kRunCols;
      const int64_t t = r[kRunTensor], c0 = r[kRunChan0], n = r[kRunCount], base = r[kRunBase];
      const int64_t rows = r[kRunRows], len = r[kRunLen], stride = r[kRunStride], phase = r[kRunPhase];
      bool ok = t >= 0 && t < static_cast<int64_t>(numels.size()) && c0 >= 0 && n >= 0 && c0 + n <= nchan &&
                phase >= 0 && phase < seg_ptr.size(0) && base >= 0 && rows >= 0 && len >= 0 && stride >= 0;
      if (ok && n > 0 && rows > 0 && len > 0) ok = base + (n - 1) * len + (rows - 1) * stride + len <= numels[t];
      TORCH_CHECK_VALUE(ok, what, ": run ", i, " of the layout lies outside its tensor or the channel range; "
                        "rebuild the ChannelLayout");
    }
  }
}

void check_grads(const char* what, at::TensorList tensors, at::TensorList grads) {
  TORCH_CHECK_VALUE(tensors.size() == grads.size(), what, ": got ", grads.size(),
                    " grads for ", tensors.size(), " tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK_VALUE(grads[i].defined(), what, ": grad ", i, " is undefined");
    TORCH_CHECK_VALUE(grads[i].sizes() == tensors[i].sizes() &&
                          grads[i].scalar_type() == tensors[i].scalar_type() &&
                          grads[i].device() == tensors[i].device() && grads[i].is_contiguous(),
                      what, ": grad ", i,
                      " must be contiguous with the same shape, dtype and device as its tensor");
  }
}

void check_mask(const char* what, const at::Tensor& mask, int64_t nchan, const at::Device& device) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool && mask.dim() == 1 && mask.numel() == nchan &&
                        mask.is_contiguous(),
                    what, ": mask must be a contiguous bool vector with one entry per channel (",
                    nchan, "), got ", mask.scalar_type(), " of shape ", mask.sizes());
  TORCH_CHECK_VALUE(mask.device() == device, what, ": mask is on ", mask.device(),
                    " but the layout is on ", device);
}

void check_scalar(const char* what, const char* name, const at::Tensor& s, const at::Device& device) {
  TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.numel() == 1, what, ": ", name,
                    " must be a float32 tensor with one element");
  TORCH_CHECK_VALUE(s.device() == device, what, ": ", name, " is on ", s.device(),
                    " but the layout is on ", device);
}

void check_group_lasso(at::TensorList tensors, at::TensorList grads, c10::IntArrayRef numels,
                       const at::Tensor& segs, const at::Tensor& seg_ptr, const at::Tensor& runs,
                       const at::Tensor& mask, const at::Tensor& reg, double eps) {
  check_layout("group_lasso_grad_", tensors, numels, segs, seg_ptr, runs);
  check_grads("group_lasso_grad_", tensors, grads);
  check_mask("group_lasso_grad_", mask, seg_ptr.size(1) - 1, segs.device());
  check_scalar("group_lasso_grad_", "reg", reg, segs.device());
  TORCH_CHECK_VALUE(eps > 0, "group_lasso_grad_: eps must be positive, got ", eps);
}

void check_scale_channels(at::TensorList tensors, c10::IntArrayRef numels, const at::Tensor& segs,
                          const at::Tensor& seg_ptr, const at::Tensor& runs, const at::Tensor& mask,
                          const at::Tensor& factor) {
  check_layout("scale_channels_", tensors, numels, segs, seg_ptr, runs);
  check_mask("scale_channels_", mask, seg_ptr.size(1) - 1, segs.device());
  check_scalar("scale_channels_", "factor", factor, segs.device());
}

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
    const bool same = i > 0 && tensors[i].data_ptr() == tensors[i - 1].data_ptr() &&
                      tensors[i].sizes() == tensors[i - 1].sizes();
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

TORCH_LIBRARY(oneprune, m) {
  // Per channel: fp32 sum of squares over all its segments, and the saliency
  // (1/M) * sum_m ||s_m||^2 / sqrt(len(s_m)) over its M segments.
  m.def(
      "grouped_norms(Tensor[] tensors, int[] numels, Tensor segs, Tensor seg_ptr, Tensor runs) -> (Tensor, "
      "Tensor)");
  // For channels with mask[c]: grad += reg * w / max(||g_c||, eps) on every segment.
  // Returns reg * sum_{mask} ||g_c|| as a 0-d fp32 tensor.
  m.def(
      "group_lasso_grad_(Tensor[] tensors, Tensor(a!)[] grads, int[] numels, Tensor segs, "
      "Tensor seg_ptr, Tensor runs, Tensor mask, Tensor reg, float eps) -> Tensor");
  // For channels with mask[c]: w *= factor on every segment.
  m.def(
      "scale_channels_(Tensor(a!)[] tensors, int[] numels, Tensor segs, Tensor seg_ptr, "
      "Tensor runs, Tensor mask, Tensor factor) -> ()");
  // Moves the slices keep[0..n) along `dim` to the front of `tensor`'s storage, in
  // order, as a contiguous [outer, n, inner] block. `keep` must be sorted, unique
  // and in range (checked by the Python wrapper).
  m.def("compact_(Tensor(a!) tensor, int dim, Tensor keep) -> ()");
  // compact_ of many tensors in one call (each its own dim and keep): the whole model's
  // weights, grads, buffers and optimizer state after a prune. The tensors must not share
  // memory; the CPU kernel works on several tensors in parallel.
  m.def("compact_many_(Tensor(a!)[] tensors, int[] dims, Tensor[] keeps) -> ()");
}

}  // namespace oneprune
