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
#include <cstdint>
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

// Work items of the runs [r0, r1): chunks of channels covering about 1024 elements (4 KiB
// of fp32) per row, so a wide column slice splits into several items.
inline std::vector<WorkItem> make_work(const int64_t* runs, int64_t r0, int64_t r1) {
  std::vector<WorkItem> items;
  for (int64_t i = r0; i < r1; ++i) {
    const Run r = read_run(runs, i);
    const int64_t chunk = std::max<int64_t>(1, 1024 / std::max<int64_t>(r.len, 1));
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

// Adds the squares of channels [k0, k1) of one row of a run to out[k0..k1), with a tight loop
// per row shape: a column slice of a 1x1 conv or linear (len 1) vectorises across channels.
template <typename T>
inline void row_sumsq(const T* rp, int64_t len, int64_t k0, int64_t k1, const bool* mask, float* out) {
  if (len == 1) {
    if (mask) {
      for (int64_t k = k0; k < k1; ++k) {
        const float v = static_cast<float>(rp[k]);
        out[k] += mask[k] ? v * v : 0.f;
      }
    } else {
      for (int64_t k = k0; k < k1; ++k) {
        const float v = static_cast<float>(rp[k]);
        out[k] += v * v;
      }
    }
    return;
  }
  for (int64_t k = k0; k < k1; ++k) {
    if (mask && !mask[k]) continue;
    const T* p = rp + k * len;
    if (len < 32) {
      float acc = 0.f;
      for (int64_t j = 0; j < len; ++j) {
        const float v = static_cast<float>(p[j]);
        acc += v * v;
      }
      out[k] += acc;
    } else {
      out[k] += sumsq(p, len);
    }
  }
}

// Per (run, channel) sums of squares into partial (only channels with mask[c], when given).
inline void run_sumsq_partials(const TensorTable& tt, const int64_t* runs, const std::vector<WorkItem>& items,
                               const std::vector<int64_t>& off, const bool* mask, float* partial) {
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem it = items[w];
      const Run r = read_run(runs, it.run);
      float* out = partial + off[it.run];
      const bool* m = mask ? mask + r.chan0 : nullptr;
      for (int64_t k = it.k0; k < it.k1; ++k) out[k] = 0.f;
      bool any = m == nullptr;
      for (int64_t k = it.k0; k < it.k1 && !any; ++k) any = m[k];
      if (!any) continue;
      dispatch_dtype(tt.dtype[r.tensor], [&](auto tag) {
        using T = decltype(tag);
        const T* base = reinterpret_cast<const T*>(tt.ptr[r.tensor]) + r.base;
        for (int64_t row = 0; row < r.rows; ++row) row_sumsq(base + row * r.stride, r.len, it.k0, it.k1, m, out);
      });
    }
  });
}

// For every work item of one phase, every masked channel c and every element of its
// segment: d = op(d, s, a[c]) in fp32, where s is the same element of `src` (when kHasSrc)
// and a[c] a per-channel coefficient. Used for the in-place updates (scaling, group lasso).
// A row of a column slice with one element per channel is updated across its channels in
// one branch-free (vectorisable) loop; longer segments skip unmasked channels; items
// without a masked channel touch no memory.
template <bool kHasSrc, typename Op>
inline void run_update(const TensorTable& dst, const TensorTable* src, const int64_t* runs,
                       const std::vector<WorkItem>& items, const bool* mask, const float* a, Op op) {
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem it = items[w];
      const Run r = read_run(runs, it.run);
      const bool* m = mask + r.chan0;
      const float* ac = a + r.chan0;
      bool any = false;
      for (int64_t k = it.k0; k < it.k1 && !any; ++k) any = m[k];
      if (!any) continue;
      dispatch_dtype(dst.dtype[r.tensor], [&](auto tag) {
        using T = decltype(tag);
        T* d = reinterpret_cast<T*>(dst.ptr[r.tensor]) + r.base;
        const T* s = kHasSrc ? reinterpret_cast<const T*>(src->ptr[r.tensor]) + r.base : nullptr;
        for (int64_t row = 0; row < r.rows; ++row) {
          T* dr = d + row * r.stride;
          const T* sr = kHasSrc ? s + row * r.stride : nullptr;
          if (r.len == 1) {
            for (int64_t k = it.k0; k < it.k1; ++k) {
              const float x = static_cast<float>(dr[k]);
              const float y = op(x, kHasSrc ? static_cast<float>(sr[k]) : 0.f, ac[k]);
              dr[k] = static_cast<T>(m[k] ? y : x);
            }
            continue;
          }
          for (int64_t k = it.k0; k < it.k1; ++k) {
            if (!m[k]) continue;
            T* dp = dr + k * r.len;
            const T* sp = kHasSrc ? sr + k * r.len : nullptr;
            const float ak = ac[k];
            for (int64_t j = 0; j < r.len; ++j)
              dp[j] = static_cast<T>(op(static_cast<float>(dp[j]), kHasSrc ? static_cast<float>(sp[j]) : 0.f, ak));
          }
        }
      });
    }
  });
}

}  // namespace cpu
}  // namespace oneprune
