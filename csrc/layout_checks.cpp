// Host-side checks of the layout ops' arguments (shared by the CPU and CUDA kernels) and the
// cache of checked tables and their device copies. See oneprune.h.
#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "oneprune.h"

namespace oneprune {

namespace {

using layout::Table;

bool supported_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// ---------------------------------------------------------------------------------- the table
#define TABLE_CHECK(cond, ...) \
  TORCH_CHECK_VALUE(cond, what, ": layout table: ", __VA_ARGS__, "; rebuild the ChannelLayout")

void check_header(const char* what, const int64_t* t, int64_t n) {
  TORCH_CHECK_VALUE(n >= layout::kHeaderLen && t[0] == layout::kMagic && t[1] == layout::kFormatVersion, what,
                    ": the table is not a oneprune layout table (format ", layout::kFormatVersion,
                    "); pass ChannelLayout.table, or rebuild the ChannelLayout");
  for (int k = 2; k < layout::kHeaderLen; ++k)
    TABLE_CHECK(t[k] >= 0 && t[k] <= n * 1024, "count ", k, " is ", t[k], " for a table of ", n, " values");
  const int64_t len = layout::table_length(t[2], t[3], t[4], t[5], t[7]);
  TABLE_CHECK(len == n, "its counts need ", len, " values but it has ", n);
}

// Dense: the dims of size > 1, by decreasing stride, are a row-major layout of the sizes.
bool dense(const int64_t* sizes, const int64_t* strides, int64_t ndim) {
  std::vector<int64_t> d;
  for (int64_t i = 0; i < ndim; ++i)
    if (sizes[i] > 1) d.push_back(i);
  std::sort(d.begin(), d.end(), [&](int64_t a, int64_t b) { return strides[a] > strides[b]; });
  int64_t expect = 1;
  for (auto it = d.rbegin(); it != d.rend(); ++it) {
    if (strides[*it] != expect) return false;
    expect *= sizes[*it];
  }
  return true;
}

void check_tensor_rows(const char* what, const Table& v) {
  for (int64_t i = 0; i < v.ntensors; ++i) {
    const int64_t* r = v.tensors + i * layout::kTensorCols;
    const int64_t numel = r[0], ndim = r[1];
    TABLE_CHECK(ndim >= 0 && ndim <= layout::kMaxDims, "tensor ", i, " has ", ndim, " dims");
    int64_t prod = 1;
    for (int64_t d = 0; d < ndim; ++d) {
      const int64_t s = r[2 + d];
      TABLE_CHECK(s >= 0 && r[2 + layout::kMaxDims + d] >= 0, "tensor ", i, " has a negative size or stride");
      TABLE_CHECK(s == 0 || prod <= std::numeric_limits<int64_t>::max() / s, "tensor ", i, " is too large");
      prod *= s;
    }
    TABLE_CHECK(prod == numel, "tensor ", i, " has ", numel, " elements but its sizes give ", prod);
    TABLE_CHECK(dense(r + 2, r + 2 + layout::kMaxDims, ndim), "tensor ", i, " is not dense in memory");
  }
}

// Channels ngroups groups starting at chan0 use (repeating every `mod` groups).
bool channels_fit(int64_t chan0, int64_t div, int64_t mod, int64_t extent, int64_t nchan) {
  if (chan0 < 0) return chan0 == -1;
  if (div < 1 || mod < 1) return false;
  const int64_t ngroups = extent == 0 ? 0 : (extent - 1) / div + 1;
  return chan0 + std::min(mod, ngroups) <= nchan;
}

void check_tiles(const char* what, const Table& v) {
  constexpr int64_t kMaxWidth = std::numeric_limits<int32_t>::max();
  for (int64_t i = 0; i < v.ntiles; ++i) {
    const layout::Tile t = layout::read_tile(v, i);
    TABLE_CHECK(t.tensor >= 0 && t.tensor < v.ntensors, "tile ", i, " names tensor ", t.tensor, " of ",
                v.ntensors);
    const int64_t numel = v.tensors[t.tensor * layout::kTensorCols];
    TABLE_CHECK(t.base >= 0 && t.lines >= 0 && t.width >= 0 && t.width <= kMaxWidth && t.stride >= 0, "tile ", i,
                " has a negative or too large extent");
    if (t.lines > 0 && t.width > 0) {
      const bool fits = t.base <= numel - t.width &&
                        (t.lines == 1 || (t.stride <= numel && (t.lines - 1) <= (numel - t.width - t.base) /
                                                                                     std::max<int64_t>(t.stride, 1)));
      TABLE_CHECK(fits && (t.lines == 1 || t.stride > 0), "tile ", i, " reaches past the end of tensor ", t.tensor,
                  " (", numel, " elements)");
    }
    TABLE_CHECK(channels_fit(t.lchan0, t.ldiv, t.lmod, t.lines, v.nchan) &&
                    channels_fit(t.pchan0, t.pdiv, t.pmod, t.width, v.nchan),
                "tile ", i, " names channels outside [0, ", v.nchan, ")");
  }
}

void check_chunks(const char* what, const Table& v) {
  for (int64_t i = 0; i < v.nchunks; ++i) {
    const layout::Chunk c = layout::read_chunk(v, i);
    TABLE_CHECK(c.tile >= 0 && c.tile < v.ntiles, "chunk ", i, " names tile ", c.tile, " of ", v.ntiles);
    const layout::Tile t = layout::read_tile(v, c.tile);
    TABLE_CHECK(c.l0 >= 0 && c.nl >= 1 && c.nl <= layout::kMaxChunkLines && c.l0 <= t.lines - c.nl && c.j0 >= 0 &&
                    c.nj >= 1 && c.nj <= layout::kMaxChunkWidth && c.j0 <= t.width - c.nj &&
                    c.nl * c.nj <= layout::kMaxChunkElems,
                "chunk ", i, " lies outside its tile or exceeds the chunk size limits");
    const layout::ChunkSlots s = layout::chunk_slots(t, c);
    TABLE_CHECK(c.slot0 >= 0 && c.slot0 <= v.nslots - s.nls - s.nps, "chunk ", i, " writes slots past ", v.nslots);
  }
}

void check_entries(const char* what, const Table& v) {
  TABLE_CHECK(v.cptr[0] == 0 && v.cptr[v.nchan] == v.nentries, "the channel pointers do not span the entries");
  for (int64_t c = 0; c < v.nchan; ++c) {
    TABLE_CHECK(v.cptr[c] <= v.cptr[c + 1], "the channel pointers decrease at channel ", c);
    TABLE_CHECK(v.nslices[c] >= 0, "channel ", c, " has a negative slice count");
  }
  for (int64_t e = 0; e < v.nentries; ++e) {
    const int64_t slot = v.entries[e * layout::kEntryCols], len = v.entries[e * layout::kEntryCols + 1];
    TABLE_CHECK(slot >= 0 && slot < v.nslots && len >= 1, "entry ", e, " names slot ", slot, " of ", v.nslots,
                " (length ", len, ")");
  }
}

Table validate(const char* what, const at::Tensor& table) {
  const int64_t* t = table.data_ptr<int64_t>();
  check_header(what, t, table.numel());
  const Table v = layout::table_view(t);
  check_tensor_rows(what, v);
  check_tiles(what, v);
  check_chunks(what, v);
  check_entries(what, v);
  return v;
}
#undef TABLE_CHECK

// Checked tables, by TensorImpl. The weak reference keeps the TensorImpl's address from being
// reused while the entry exists, so a new table can never be mistaken for a checked one; the
// version and data pointer catch in-place changes. Entries of dead tables are dropped when a
// new table is added; a device copy lives as long as its entry.
struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> impl;
  int64_t version;
  const void* data;
  std::vector<std::pair<at::Device, at::Tensor>> copies;
};

std::mutex g_mutex;
std::unordered_map<const c10::TensorImpl*, Entry>& cache() {
  static auto* m = new std::unordered_map<const c10::TensorImpl*, Entry>();  // never destroyed (exit order)
  return *m;
}

bool cacheable(const at::Tensor& table) { return !table.is_inference(); }

Entry* find_entry(const at::Tensor& table) {
  auto& m = cache();
  auto it = m.find(table.unsafeGetTensorImpl());
  if (it == m.end() || it->second.impl.expired()) return nullptr;
  if (it->second.version != table._version() || it->second.data != table.const_data_ptr()) return nullptr;
  return &it->second;
}

}  // namespace

layout::Table checked_table(const char* what, const at::Tensor& table) {
  TORCH_CHECK_VALUE(table.defined() && table.device().is_cpu() && table.scalar_type() == at::kLong &&
                        table.dim() == 1 && table.is_contiguous(),
                    what, ": the layout table must be a contiguous 1-d int64 CPU tensor (ChannelLayout.table)");
  if (!cacheable(table)) return validate(what, table);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (find_entry(table) != nullptr) return layout::table_view(table.const_data_ptr<int64_t>());
  }
  const Table v = validate(what, table);  // throws before anything is cached
  std::lock_guard<std::mutex> lock(g_mutex);
  auto& m = cache();
  for (auto it = m.begin(); it != m.end();) it = it->second.impl.expired() ? m.erase(it) : std::next(it);
  Entry e{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(table.getIntrusivePtr()),
          table._version(), table.const_data_ptr(), {}};
  m.insert_or_assign(table.unsafeGetTensorImpl(), std::move(e));
  return v;
}

at::Tensor table_on(const at::Tensor& table, const at::Device& device) {
  if (device.is_cpu()) return table;
  if (cacheable(table)) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (Entry* e = find_entry(table)) {
      for (const auto& [dev, copy] : e->copies)
        if (dev == device) return copy;
      at::Tensor copy = table.to(device, /*non_blocking=*/false, /*copy=*/true);
      e->copies.emplace_back(device, copy);
      return copy;
    }
  }
  return table.to(device, /*non_blocking=*/false, /*copy=*/true);
}

at::Device check_tensors(const char* what, at::TensorList tensors, const layout::Table& t,
                         const at::Device& fallback) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(tensors.size()) == t.ntensors, what, ": got ", tensors.size(),
                    " tensors but the layout describes ", t.ntensors, "; call layout.rebuild()");
  const at::Device device = tensors.empty() ? fallback : tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& x = tensors[i];
    TORCH_CHECK_VALUE(x.defined(), what, ": tensor ", i, " is undefined");
    TORCH_CHECK_VALUE(x.device() == device, what, ": tensor ", i, " is on ", x.device(), " but tensor 0 is on ",
                      device, "; move the whole model to one device");
    TORCH_CHECK_VALUE(supported_dtype(x.scalar_type()), what, ": tensor ", i, " has dtype ", x.scalar_type(),
                      "; only float32, float16 and bfloat16 are supported");
    const int64_t* r = t.tensors + i * layout::kTensorCols;
    bool same = x.dim() == r[1] && x.numel() == r[0];
    for (int64_t d = 0; same && d < x.dim(); ++d)
      same = x.size(d) == r[2 + d] && (x.size(d) <= 1 || x.stride(d) == r[2 + layout::kMaxDims + d]);
    if (!same) {
      const c10::IntArrayRef sizes(r + 2, static_cast<size_t>(std::clamp<int64_t>(r[1], 0, layout::kMaxDims)));
      const c10::IntArrayRef strides(r + 2 + layout::kMaxDims, sizes.size());
      TORCH_CHECK_VALUE(false, what, ": tensor ", i, " has shape ", x.sizes(), " and strides ", x.strides(),
                        " but the layout was built for shape ", sizes, " and strides ", strides,
                        "; its shape or memory format changed behind the layout: call layout.rebuild()");
    }
  }
  return device;
}

std::vector<uint8_t> frozen_flags(const char* what, c10::IntArrayRef frozen, int64_t ntensors) {
  std::vector<uint8_t> f(static_cast<size_t>(ntensors), 0);
  for (int64_t i : frozen) {
    TORCH_CHECK_INDEX(i >= 0 && i < ntensors, what, ": frozen index ", i, " is outside [0, ", ntensors, ")");
    f[i] = 1;
  }
  return f;
}

void check_grads(const char* what, at::TensorList tensors, at::TensorList grads, const std::vector<uint8_t>& frozen) {
  TORCH_CHECK_VALUE(tensors.size() == grads.size(), what, ": got ", grads.size(), " grads for ", tensors.size(),
                    " tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (frozen[i]) continue;
    const at::Tensor& g = grads[i];
    const at::Tensor& w = tensors[i];
    TORCH_CHECK_VALUE(g.defined(), what, ": grad ", i, " is undefined");
    TORCH_CHECK_VALUE(g.sizes() == w.sizes() && g.scalar_type() == w.scalar_type() && g.device() == w.device(), what,
                      ": grad ", i, " must have the same shape, dtype and device as its tensor (", w.sizes(), ", ",
                      w.scalar_type(), ", ", w.device(), "), got ", g.sizes(), ", ", g.scalar_type(), ", ", g.device());
    bool same = true;
    for (int64_t d = 0; same && d < w.dim(); ++d) same = w.size(d) <= 1 || g.stride(d) == w.stride(d);
    TORCH_CHECK_VALUE(same, what, ": grad ", i, " has strides ", g.strides(), " but its tensor has ", w.strides(),
                      " (a different memory format); make the .grad match its parameter, e.g. "
                      "p.grad = p.grad.contiguous(memory_format=torch.channels_last)");
  }
}

void check_mask(const char* what, const at::Tensor& mask, int64_t nchan, const at::Device& device) {
  TORCH_CHECK_VALUE(mask.defined() && mask.scalar_type() == at::kBool && mask.dim() == 1 && mask.numel() == nchan &&
                        mask.is_contiguous(),
                    what, ": mask must be a contiguous bool vector with one entry per channel (", nchan, "), got ",
                    mask.defined() ? c10::toString(mask.scalar_type()) : "undefined", " of shape ",
                    mask.defined() ? mask.sizes() : c10::IntArrayRef{});
  TORCH_CHECK_VALUE(mask.device() == device, what, ": mask is on ", mask.device(), " but the tensors are on ", device);
}

void check_scalar(const char* what, const char* name, const at::Tensor& s, const at::Device& device) {
  TORCH_CHECK_VALUE(s.defined() && s.scalar_type() == at::kFloat && s.numel() == 1, what, ": ", name,
                    " must be a float32 tensor with one element");
  TORCH_CHECK_VALUE(s.device() == device, what, ": ", name, " is on ", s.device(), " but the tensors are on ", device);
  if (s.device().is_cpu()) {
    const float v = *s.const_data_ptr<float>();
    TORCH_CHECK_VALUE(std::isfinite(v), what, ": ", name, " must be finite, got ", v);
  }
}

LayoutCall check_grouped_norms(at::TensorList tensors, const at::Tensor& table, int64_t nchan) {
  const char* what = "grouped_norms";
  const layout::Table t = checked_table(what, table);
  TORCH_CHECK_VALUE(nchan == t.nchan, what, ": nchan is ", nchan, " but the table describes ", t.nchan,
                    " channels");
  const at::Device device = check_tensors(what, tensors, t, table.device());
  return LayoutCall{t, device, {}};
}

LayoutCall check_group_lasso(at::TensorList tensors, at::TensorList grads, const at::Tensor& table,
                             const at::Tensor& mask, const at::Tensor& reg, double eps, c10::IntArrayRef frozen) {
  const char* what = "group_lasso_grad_";
  const layout::Table t = checked_table(what, table);
  const at::Device device = check_tensors(what, tensors, t, mask.defined() ? mask.device() : table.device());
  std::vector<uint8_t> fz = frozen_flags(what, frozen, t.ntensors);
  check_mask(what, mask, t.nchan, device);
  check_scalar(what, "reg", reg, device);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, what, ": eps must be positive and finite, got ", eps);
  check_grads(what, tensors, grads, fz);  // last: a refusal for the grads' strides alone can be fixed and retried
  return LayoutCall{t, device, std::move(fz)};
}

LayoutCall check_scale_channels(at::TensorList tensors, const at::Tensor& table, const at::Tensor& mask,
                                const at::Tensor& factor, c10::IntArrayRef frozen) {
  const char* what = "scale_channels_";
  const layout::Table t = checked_table(what, table);
  const at::Device device = check_tensors(what, tensors, t, mask.defined() ? mask.device() : table.device());
  std::vector<uint8_t> fz = frozen_flags(what, frozen, t.ntensors);
  check_mask(what, mask, t.nchan, device);
  check_scalar(what, "factor", factor, device);
  return LayoutCall{t, device, std::move(fz)};
}

}  // namespace oneprune
