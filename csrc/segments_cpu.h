// CPU helpers: walk the layout by runs (one run = one slice of one group, see oneprune.h).
//
// A run is processed row-major: for every row, the contiguous span covering a chunk of its
// channels is read in order, so a column slice (input channels of a consumer) streams whole
// rows instead of striding down one column per channel. Work items are (run, channel chunk);
// partial results are written per (run, channel) and combined in a fixed order, so results do
// not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "oneprune.h"

namespace oneprune {
namespace cpu {

struct Run {
  int64_t tensor, chan0, count, base, rows, len, stride, phase;
  int64_t seg_numel() const { return rows * len; }
};

inline Run read_run(const int64_t* runs, int64_t i) {
  const int64_t* r = runs + i * kRunCols;
  return Run{r[kRunTensor], r[kRunChan0], r[kRunCount], r[kRunBase],
             r[kRunRows],   r[kRunLen],   r[kRunStride], r[kRunPhase]};
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

// fp32 sum of squares of n contiguous values; eight partial sums in a fixed order.
template <typename T>
inline float sumsq(const T* p, int64_t n) {
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) {
      const float v = static_cast<float>(p[j + u]);
      a[u] += v * v;
    }
  }
  for (; j < n; ++j) {
    const float v = static_cast<float>(p[j]);
    a[0] += v * v;
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

struct WorkItem {
  int64_t run, k0, k1;  // channels chan0+k0 .. chan0+k1-1 of the run
};

// Work items of the runs [r0, r1): chunks of channels covering about 4096 elements per row.
inline std::vector<WorkItem> make_work(const int64_t* runs, int64_t r0, int64_t r1) {
  std::vector<WorkItem> items;
  for (int64_t i = r0; i < r1; ++i) {
    const Run r = read_run(runs, i);
    const int64_t chunk = std::max<int64_t>(1, 4096 / std::max<int64_t>(r.len, 1));
    for (int64_t k = 0; k < r.count; k += chunk) items.push_back({i, k, std::min(r.count, k + chunk)});
  }
  return items;
}

// Prefix offsets of the runs' channel counts: partial[off[i] + k] belongs to run i, channel k.
inline std::vector<int64_t> run_offsets(const int64_t* runs, int64_t nrun) {
  std::vector<int64_t> off(static_cast<size_t>(nrun) + 1, 0);
  for (int64_t i = 0; i < nrun; ++i) off[i + 1] = off[i] + read_run(runs, i).count;
  return off;
}

// Index range [first, last) of the runs of each phase (runs are sorted by phase).
inline std::vector<std::pair<int64_t, int64_t>> phase_ranges(const int64_t* runs, int64_t nrun, int64_t nphase) {
  std::vector<std::pair<int64_t, int64_t>> out(static_cast<size_t>(nphase), {nrun, nrun});
  int64_t i = 0;
  for (int64_t p = 0; p < nphase; ++p) {
    out[p].first = i;
    while (i < nrun && read_run(runs, i).phase == p) ++i;
    out[p].second = i;
  }
  TORCH_CHECK(i == nrun, "oneprune: runs are not sorted by phase; rebuild the ChannelLayout");
  return out;
}

// Per (run, channel) sums of squares into partial (only channels with mask[c], when given).
inline void run_sumsq_partials(const TensorTable& tt, const int64_t* runs, const std::vector<WorkItem>& items,
                               const std::vector<int64_t>& off, const bool* mask, float* partial) {
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem it = items[w];
      const Run r = read_run(runs, it.run);
      float* out = partial + off[it.run];
      for (int64_t k = it.k0; k < it.k1; ++k) out[k] = 0.f;
      dispatch_dtype(tt.dtype[r.tensor], [&](auto tag) {
        using T = decltype(tag);
        const T* base = reinterpret_cast<const T*>(tt.ptr[r.tensor]) + r.base;
        for (int64_t row = 0; row < r.rows; ++row) {
          const T* rp = base + row * r.stride;
          for (int64_t k = it.k0; k < it.k1; ++k) {
            if (mask && !mask[r.chan0 + k]) continue;
            out[k] += sumsq(rp + k * r.len, r.len);
          }
        }
      });
    }
  });
}

// For every work item of one phase: f(T* dst_row_span, const T* src_row_span, len, coef_of_channel)
// is applied per row and channel; used for the in-place updates (scaling, group lasso).
template <typename F>
inline void run_update(const TensorTable& dst, const TensorTable* src, const int64_t* runs,
                       const std::vector<WorkItem>& items, const bool* mask, F&& f) {
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem it = items[w];
      const Run r = read_run(runs, it.run);
      dispatch_dtype(dst.dtype[r.tensor], [&](auto tag) {
        using T = decltype(tag);
        T* d = reinterpret_cast<T*>(dst.ptr[r.tensor]) + r.base;
        const T* s = src ? reinterpret_cast<const T*>(src->ptr[r.tensor]) + r.base : nullptr;
        for (int64_t row = 0; row < r.rows; ++row) {
          for (int64_t k = it.k0; k < it.k1; ++k) {
            const int64_t c = r.chan0 + k;
            if (!mask[c]) continue;
            const int64_t o = row * r.stride + k * r.len;
            f(d + o, s ? s + o : nullptr, r.len, c);
          }
        }
      });
    }
  });
}

}  // namespace cpu
}  // namespace oneprune
