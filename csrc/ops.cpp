// Op schemas, defined once here; the kernels are registered per dispatch key in the other
// files (CPU: csrc/*.cpp, CUDA: csrc/cuda/*.cu) and the fake kernels in oneprune_ext/kernels/ops.py.
#include <Python.h>
#include <torch/library.h>

// Importing the Python module `oneprune_ext._C` registers the ops below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                          nullptr,  nullptr,  nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace oneprune {

TORCH_LIBRARY(oneprune, m) {
  // `table` is the layout's int64 host table (csrc/layout_index.h); `tensors` are the tensors it
  // describes, in its order, with the shapes and memory order it was built for.
  //
  // Per channel: fp32 sum of squares over all its slices, and the saliency
  // (1/M) * sum_m ||s_m||^2 / sqrt(len(s_m)) over its M slices.
  // `nchan` (the table's channel count) gives the outputs' length to the fake kernel.
  m.def("grouped_norms(Tensor[] tensors, Tensor table, int nchan) -> (Tensor, Tensor)");
  // For channels with mask[c]: grad += reg * w / max(||g_c||, eps) on every slice, except on
  // the tensors listed in `frozen` (whose grads entries are ignored). Returns
  // reg * sum_{mask} ||g_c|| (frozen tensors included in the norms) as a 0-d fp32 tensor.
  m.def(
      "group_lasso_grad_(Tensor[] tensors, Tensor(a!)[] grads, Tensor table, Tensor mask, Tensor reg, "
      "float eps, int[] frozen) -> Tensor");
  // For channels with mask[c]: w *= factor on every slice, except on the tensors in `frozen`.
  m.def("scale_channels_(Tensor(a!)[] tensors, Tensor table, Tensor mask, Tensor factor, int[] frozen) -> ()");
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
