// CPU helpers: walk the elements of one layout segment of a float32/float16/bfloat16 tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "oneprune.h"

namespace oneprune {
namespace cpu {

struct Seg {
  int64_t tensor, base, rows, len, stride;
  int64_t numel() const { return rows * len; }
};

inline Seg read_seg(const int64_t* segs, int64_t i) {
  const int64_t* s = segs + i * kSegCols;
  return Seg{s[kTensor], s[kBase], s[kRows], s[kRowLen], s[kRowStride]};
}

// Raw data pointers and dtypes of a tensor list, read once per op call.
struct TensorTable {
  std::vector<char*> ptr;
  std::vector<at::ScalarType> dtype;
  explicit TensorTable(at::TensorList ts) {
    ptr.reserve(ts.size());
    dtype.reserve(ts.size());
    for (const auto& t : ts) {
      ptr.push_back(static_cast<char*>(t.data_ptr()));
      dtype.push_back(t.scalar_type());
    }
  }
};

// Calls f(T{}) with T the C++ type of a float32/float16/bfloat16 dtype.
template <typename F>
inline void dispatch_dtype(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "oneprune: unsupported dtype ", dt);
  }
}

// Calls f(T* row_ptr, int64_t len) for every row of the segment, with T the tensor's type.
template <typename F>
inline void for_each_row(char* data, at::ScalarType dt, const Seg& s, F&& f) {
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = reinterpret_cast<T*>(data) + s.base;
    for (int64_t r = 0; r < s.rows; ++r) f(p + r * s.stride, s.len);
  });
}

// fp32 sum of squares of one segment, in a fixed order.
inline float seg_sumsq(const TensorTable& tt, const Seg& s) {
  float acc = 0.f;
  for_each_row(tt.ptr[s.tensor], tt.dtype[s.tensor], s, [&](auto* row, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      const float v = static_cast<float>(row[j]);
      acc += v * v;
    }
  });
  return acc;
}

}  // namespace cpu
}  // namespace oneprune
