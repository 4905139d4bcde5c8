// C++ tests of the CPU kernels of liboneprune_ops.so and of the index math they share with the
// CUDA kernels (csrc/layout_index.h), run by ctest.
//
//   test_kernels_cpu <path/to/liboneprune_ops.so> [index|grouped_norms|group_lasso|scale_channels|compact|errors|all]
//
// The library is loaded with dlopen(RTLD_NOW), as torch.ops.load_library does, and the ops
// are called boxed through the dispatcher (exactly how Python calls them). The layout tables
// are built here by a small independent builder (not oneprune_ext/kernels/layout.py) from random
// tensor specs: a tensor seen as [O, I, inner] (contiguous, or channels_last for 4-d), whose
// row o belongs to channel row_off + o % rcount (rcount < O: a grouped conv's repeated slices)
// and whose columns [c0, c0 + nc*cblock) to col_off + (i - c0) / cblock (a concat offset and a
// flatten block). Every expected value comes from naive loops over those specs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <dlfcn.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "layout_index.h"

namespace {

namespace L = oneprune::layout;

int g_failures = 0;
int g_checks = 0;

void fail(const char* file, int line, const char* cond, const std::string& msg) {
  ++g_failures;
  if (g_failures <= 30) std::fprintf(stderr, "%s:%d: EXPECT(%s) failed: %s\n", file, line, cond, msg.c_str());
}

#define EXPECT(cond, msg)                          \
  do {                                            \
    ++g_checks;                                   \
    if (!(cond)) {                                \
      std::ostringstream _oss;                    \
      _oss << msg;                                \
      fail(__FILE__, __LINE__, #cond, _oss.str()); \
    }                                             \
  } while (0)

// Expects the callable (the variadic part, so that it may contain commas) to throw a
// c10::Error whose message contains `needle`.
#define CHECK_THROWS(needle, ...)                                                      \
  do {                                                                                 \
    ++g_checks;                                                                        \
    bool _threw = false;                                                               \
    std::string _what;                                                                 \
    try {                                                                              \
      (__VA_ARGS__)();                                                                 \
    } catch (const c10::Error& e) {                                                    \
      _threw = true;                                                                   \
      _what = e.what_without_backtrace();                                              \
    }                                                                                  \
    if (!_threw)                                                                       \
      fail(__FILE__, __LINE__, #__VA_ARGS__, "did not throw");                         \
    else if (_what.find(needle) == std::string::npos)                                  \
      fail(__FILE__, __LINE__, #__VA_ARGS__, std::string("message lacks '") + needle + "': " + _what); \
  } while (0)

using Stack = std::vector<c10::IValue>;
using TL = std::vector<at::Tensor>;
using IL = std::vector<int64_t>;

// Boxed call of oneprune::<name> through the dispatcher; returns the output stack.
Stack call(const char* name, Stack args) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow((std::string("oneprune::") + name).c_str(), "");
  op.callBoxed(&args);
  return args;
}

const char* dtype_name(at::ScalarType t) { return c10::toString(t); }

// ---------------------------------------------------------------------------------------
// Random tensor specs and an independent table builder.
struct TensorSpec {
  std::vector<int64_t> shape;
  bool channels_last = false;  // 4-d only: memory order (O, kh, kw, I)
  int64_t O = 1, I = 1, inner = 1;
  int64_t row_off = 0, rcount = 1;  // row o -> row_off + o % rcount
  int64_t col_off = -1, c0 = 0, nc = 0, cblock = 1;  // column i in [c0, c0 + nc*cblock) -> col_off + (i-c0)/cblock
  bool line_rep = true;  // rows-only tensors: one line per row (else one line, rows as positions)

  int64_t row_chan(int64_t o) const { return row_off + o % rcount; }
  int64_t col_chan(int64_t i) const {
    return col_off >= 0 && i >= c0 && i < c0 + nc * cblock ? col_off + (i - c0) / cblock : -1;
  }
  // memory index of logical element (o, i, k)
  int64_t index(int64_t o, int64_t i, int64_t k) const {
    return channels_last ? (o * inner + k) * I + i : (o * I + i) * inner + k;
  }
};

struct Limits {
  int64_t max_width = L::kMaxChunkWidth, max_lines = L::kMaxChunkLines;
  bool random = true;  // random chunk sizes within the limits (else the largest)
};

struct Built {
  int64_t nchan = 0;
  std::vector<TensorSpec> specs;
  at::Tensor table;
  std::vector<L::Tile> tiles;
  std::vector<L::Chunk> chunks;
};

TensorSpec random_spec(std::mt19937& rng, int64_t nchan, int64_t maxdim) {
  auto rnd = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  TensorSpec s;
  const int kind = static_cast<int>(rnd(0, 3));  // 0: vector, 1: linear, 2: conv, 3: channels_last conv
  s.rcount = rnd(1, std::min(maxdim, nchan));
  const int64_t reps = rnd(0, 3) == 0 ? rnd(2, 3) : 1;
  s.O = s.rcount * reps;
  s.row_off = rnd(0, nchan - s.rcount);
  if (kind == 0) {
    s.shape = {s.O};
  } else {
    s.I = rnd(1, maxdim);
    if (kind == 1) {
      s.shape = {s.O, s.I};
    } else {
      const int64_t kh = rnd(1, 3), kw = rnd(1, 3);
      s.shape = {s.O, s.I, kh, kw};
      s.inner = kh * kw;
      s.channels_last = kind == 3;
    }
    if (rnd(0, 3) > 0) {  // column channels
      s.cblock = rnd(0, 2) == 0 ? rnd(2, 3) : 1;
      const int64_t maxnc = std::max<int64_t>(1, std::min(nchan, s.I / s.cblock));
      if (s.I >= s.cblock) {
        s.nc = rnd(1, maxnc);
        s.c0 = rnd(0, s.I - s.nc * s.cblock);
        s.col_off = rnd(0, nchan - s.nc);
      }
    }
  }
  s.line_rep = rnd(0, 1) == 1;
  return s;
}

at::Tensor make_tensor(const TensorSpec& s, at::ScalarType dt, double zero_prob = 0.0) {
  at::Tensor t = at::randn(s.shape, at::kFloat);
  if (zero_prob > 0) t = t * (at::rand(s.shape) >= zero_prob).to(at::kFloat);
  t = t.to(dt);
  return s.channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

// Chunks of one tile (random windows and line blocks within the limits), with their slots.
void add_chunks(std::mt19937& rng, int64_t tix, const L::Tile& t, const Limits& lim, std::vector<L::Chunk>& chunks,
                int64_t& nslots) {
  auto rnd = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  if (t.lines == 0 || t.width == 0) return;
  const int64_t wsz = std::min<int64_t>({t.width, lim.max_width, lim.random ? rnd(1, L::kMaxChunkWidth) : t.width});
  const int64_t nl = std::max<int64_t>(1, std::min<int64_t>({t.lines, lim.max_lines, L::kMaxChunkElems / wsz,
                                                             lim.random ? rnd(1, L::kMaxChunkLines) : t.lines}));
  for (int64_t l0 = 0; l0 < t.lines; l0 += nl)
    for (int64_t j0 = 0; j0 < t.width; j0 += wsz) {
      L::Chunk c{tix, l0, std::min(nl, t.lines - l0), j0, std::min(wsz, t.width - j0), nslots};
      const L::ChunkSlots s = L::chunk_slots(t, c);
      nslots += s.nls + s.nps;
      chunks.push_back(c);
    }
}

// Tiles of one tensor, from its spec only.
void add_tiles(const TensorSpec& s, int64_t ti, std::vector<L::Tile>& tiles) {
  const bool two = s.col_off >= 0;
  if (!two) {
    if (s.line_rep)
      tiles.push_back({ti, 0, s.O, s.I * s.inner, s.I * s.inner, s.row_off, 1, s.rcount, -1, 1, 1});
    else
      tiles.push_back({ti, 0, 1, s.O * s.I * s.inner, 0, -1, 1, 1, s.row_off, s.I * s.inner, s.rcount});
    return;
  }
  const int64_t c1 = s.c0 + s.nc * s.cblock;
  const std::array<std::array<int64_t, 3>, 3> regions = {{{0, s.c0, -1}, {s.c0, c1, s.col_off}, {c1, s.I, -1}}};
  for (const auto& r : regions) {
    if (r[1] <= r[0]) continue;
    if (s.channels_last)  // memory [O, kh*kw, I]: lines (o, k), positions i
      tiles.push_back({ti, r[0], s.O * s.inner, r[1] - r[0], s.I, s.row_off, s.inner, s.rcount, r[2], s.cblock, s.nc});
    else  // memory [O, I, inner]: lines o, positions (i, k)
      tiles.push_back({ti, r[0] * s.inner, s.O, (r[1] - r[0]) * s.inner, s.I * s.inner, s.row_off, 1, s.rcount, r[2],
                       s.cblock * s.inner, s.nc});
  }
}

// Slices per channel and each slot's slice length, from the specs.
int64_t line_slice_len(const TensorSpec& s) { return s.I * s.inner; }
int64_t pos_slice_len(const TensorSpec& s) { return s.O * s.inner * s.cblock; }

Built build(std::mt19937& rng, int64_t nchan, std::vector<TensorSpec> specs, const std::vector<at::Tensor>& ts,
            const Limits& lim = {}) {
  Built b;
  b.nchan = nchan;
  b.specs = std::move(specs);
  for (int64_t ti = 0; ti < static_cast<int64_t>(b.specs.size()); ++ti) add_tiles(b.specs[ti], ti, b.tiles);
  int64_t nslots = 0;
  for (int64_t k = 0; k < static_cast<int64_t>(b.tiles.size()); ++k) add_chunks(rng, k, b.tiles[k], lim, b.chunks, nslots);
  // entries (slot, channel, len) in slot order, then by channel (stable)
  std::vector<std::array<int64_t, 3>> ent;
  for (const auto& c : b.chunks) {
    const L::Tile& t = b.tiles[c.tile];
    const TensorSpec& s = b.specs[t.tensor];
    const L::ChunkSlots sl = L::chunk_slots(t, c);
    for (int64_t k = 0; k < sl.nls; ++k)
      ent.push_back({c.slot0 + k, L::line_group_channel(t, sl.gl0 + k), line_slice_len(s)});
    for (int64_t k = 0; k < sl.nps; ++k)
      ent.push_back({c.slot0 + sl.nls + k, L::pos_group_channel(t, sl.gp0 + k),
                     t.lchan0 >= 0 || s.col_off >= 0 ? pos_slice_len(s) : line_slice_len(s)});
  }
  std::stable_sort(ent.begin(), ent.end(), [](const auto& x, const auto& y) { return x[1] < y[1]; });
  std::vector<int64_t> nslices(nchan, 0);
  for (const auto& s : b.specs) {
    for (int64_t r = 0; r < s.rcount; ++r) nslices[s.row_off + r] += s.O / s.rcount;
    for (int64_t c = 0; c < s.nc; ++c) nslices[s.col_off + c] += 1;
  }
  std::vector<int64_t> v = {L::kMagic, L::kFormatVersion, static_cast<int64_t>(ts.size()), nchan,
                            static_cast<int64_t>(b.tiles.size()), static_cast<int64_t>(b.chunks.size()), nslots,
                            static_cast<int64_t>(ent.size())};
  for (const auto& t : ts) {
    std::vector<int64_t> row(L::kTensorCols, 0);
    row[0] = t.numel();
    row[1] = t.dim();
    for (int64_t d = 0; d < t.dim(); ++d) {
      row[2 + d] = t.size(d);
      row[2 + L::kMaxDims + d] = t.stride(d);
    }
    v.insert(v.end(), row.begin(), row.end());
  }
  for (const auto& t : b.tiles)
    v.insert(v.end(), {t.tensor, t.base, t.lines, t.width, t.stride, t.lchan0, t.ldiv, t.lmod, t.pchan0, t.pdiv, t.pmod});
  for (const auto& c : b.chunks) v.insert(v.end(), {c.tile, c.l0, c.nl, c.j0, c.nj, c.slot0});
  std::vector<int64_t> cptr(nchan + 1, 0);
  for (const auto& e : ent) cptr[e[1] + 1] += 1;
  for (int64_t c = 0; c < nchan; ++c) cptr[c + 1] += cptr[c];
  v.insert(v.end(), cptr.begin(), cptr.end());
  for (const auto& e : ent) v.insert(v.end(), {e[0], e[2]});
  v.insert(v.end(), nslices.begin(), nslices.end());
  b.table = at::tensor(v, at::kLong);
  return b;
}

struct Model {
  Built b;
  std::vector<at::Tensor> ts;
};

Model random_model(std::mt19937& rng, int64_t nchan, int ntensors, int64_t maxdim, at::ScalarType dt,
                   double zero_prob = 0.0, const Limits& lim = {}) {
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> ts;
  for (int i = 0; i < ntensors; ++i) {
    specs.push_back(random_spec(rng, nchan, maxdim));
    ts.push_back(make_tensor(specs.back(), dt, zero_prob));
  }
  Model m;
  m.ts = ts;
  m.b = build(rng, nchan, specs, ts, lim);
  return m;
}

// Naive per-channel sum of squares and saliency, in double, from the specs.
void ref_norms(const Built& b, const std::vector<at::Tensor>& ts, std::vector<double>& sq, std::vector<double>& sal) {
  sq.assign(b.nchan, 0.0);
  sal.assign(b.nchan, 0.0);
  std::vector<int64_t> m(b.nchan, 0);
  for (size_t t = 0; t < ts.size(); ++t) {
    const auto& s = b.specs[t];
    at::Tensor w = ts[t].to(at::kDouble);  // keeps the memory format
    const double* p = w.data_ptr<double>();
    std::vector<double> rows(s.O, 0.0), cols(s.I, 0.0);
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t i = 0; i < s.I; ++i)
        for (int64_t k = 0; k < s.inner; ++k) {
          const double v = p[s.index(o, i, k)];
          rows[o] += v * v;
          cols[i] += v * v;
        }
    for (int64_t o = 0; o < s.O; ++o) {  // each repeat of the rows is a slice
      sq[s.row_chan(o)] += rows[o];
      sal[s.row_chan(o)] += rows[o] / std::sqrt(double(s.I * s.inner));
      m[s.row_chan(o)] += 1;
    }
    for (int64_t c = 0; c < s.nc; ++c) {
      double ss = 0;
      for (int64_t i = s.c0 + c * s.cblock; i < s.c0 + (c + 1) * s.cblock; ++i) ss += cols[i];
      sq[s.col_off + c] += ss;
      sal[s.col_off + c] += ss / std::sqrt(double(pos_slice_len(s)));
      m[s.col_off + c] += 1;
    }
  }
  for (int64_t c = 0; c < b.nchan; ++c) sal[c] = m[c] > 0 ? sal[c] / double(m[c]) : 0.0;
}

double rtol_for(at::ScalarType dt) { return dt == at::kFloat ? 2e-5 : (dt == at::kHalf ? 3e-3 : 2.5e-2); }

bool approx(double got, double ref, double rtol, double scale) {
  return std::isfinite(got) && std::fabs(got - ref) <= rtol * std::max(std::fabs(ref), scale) + 1e-6;
}

at::Tensor random_mask(std::mt19937& rng, int64_t n) {
  at::Tensor m = at::empty({n}, at::kBool);
  for (int64_t c = 0; c < n; ++c) m.data_ptr<bool>()[c] = std::bernoulli_distribution(0.6)(rng);
  return m;
}

std::vector<int64_t> random_frozen(std::mt19937& rng, size_t n) {
  std::vector<int64_t> f;
  for (size_t i = 0; i < n; ++i)
    if (std::bernoulli_distribution(0.2)(rng)) f.push_back(static_cast<int64_t>(i));
  return f;
}

// ---------------------------------------------------------------------------------------
// The shared index math against the specs: every element of every tile maps to the right
// memory index and channels; tiles and chunks cover each element exactly once; the CUDA lane
// mapping covers each (line, vector) of a chunk exactly once within its shared-memory bounds.
void test_index(std::mt19937& rng) {
  int nmodels = 0;
  for (int rep = 0; rep < 60; ++rep) {
    const int64_t nchan = 1 + rep % 40;
    Limits lim;
    lim.max_width = rep % 3 == 0 ? 8 : L::kMaxChunkWidth;
    lim.max_lines = rep % 4 == 0 ? 2 : L::kMaxChunkLines;
    Model m = random_model(rng, nchan, 1 + rep % 6, 12, at::kFloat, 0.0, lim);
    const L::Table tab = L::table_view(m.b.table.data_ptr<int64_t>());
    EXPECT(tab.ntiles == static_cast<int64_t>(m.b.tiles.size()) && tab.nchunks == static_cast<int64_t>(m.b.chunks.size()),
           "table_view counts");
    std::vector<std::vector<int>> seen(m.ts.size());
    for (size_t t = 0; t < m.ts.size(); ++t) seen[t].assign(m.ts[t].numel(), 0);
    for (int64_t i = 0; i < tab.ntiles; ++i) {
      const L::Tile t = L::read_tile(tab, i);
      const TensorSpec& s = m.b.specs[t.tensor];
      // expected channels of memory index e: invert the spec's index()
      std::vector<std::pair<int64_t, int64_t>> want(m.ts[t.tensor].numel(), {-2, -2});
      for (int64_t o = 0; o < s.O; ++o)
        for (int64_t ii = 0; ii < s.I; ++ii)
          for (int64_t k = 0; k < s.inner; ++k) {
            const int64_t col = s.col_chan(ii);
            // rows-only tensors laid out as positions carry the row channel on the position side
            want[s.index(o, ii, k)] = s.col_off < 0 && !s.line_rep ? std::make_pair(int64_t(-1), s.row_chan(o))
                                                                   : std::make_pair(s.row_chan(o), col);
          }
      for (int64_t e = 0; e < t.lines * t.width; ++e) {
        const L::ElementChannels ec = L::element_channels(t, e);
        EXPECT(ec.index >= 0 && ec.index < m.ts[t.tensor].numel(), "tile " << i << " element " << e << " index " << ec.index);
        if (ec.index < 0 || ec.index >= m.ts[t.tensor].numel()) continue;
        seen[t.tensor][ec.index] += 1;
        EXPECT(ec.line_chan == want[ec.index].first && ec.pos_chan == want[ec.index].second,
               "tile " << i << " element " << e << ": channels (" << ec.line_chan << ", " << ec.pos_chan << "), want ("
                       << want[ec.index].first << ", " << want[ec.index].second << ")");
      }
    }
    for (size_t t = 0; t < m.ts.size(); ++t)
      for (size_t e = 0; e < seen[t].size(); ++e)
        EXPECT(seen[t][e] == 1, "tensor " << t << " element " << e << " covered " << seen[t][e] << " times");
    // chunks cover each tile position once; slots are disjoint and dense
    std::map<int64_t, std::vector<int>> cover;
    std::vector<int> slot_used(tab.nslots, 0);
    for (int64_t k = 0; k < tab.nchunks; ++k) {
      const L::Chunk c = L::read_chunk(tab, k);
      const L::Tile t = L::read_tile(tab, c.tile);
      auto& cv = cover[c.tile];
      cv.resize(t.lines * t.width, 0);
      for (int64_t l = c.l0; l < c.l0 + c.nl; ++l)
        for (int64_t j = c.j0; j < c.j0 + c.nj; ++j) cv[l * t.width + j] += 1;
      const L::ChunkSlots s = L::chunk_slots(t, c);
      for (int64_t q = 0; q < s.nls + s.nps; ++q) slot_used[c.slot0 + q] += 1;
      // group_lines / group_positions partition the chunk
      int64_t nlines = 0, npos = 0;
      for (int64_t g = s.gl0; g < s.gl0 + s.nls; ++g) {
        int64_t a, b2;
        L::group_lines(t, c, g, &a, &b2);
        EXPECT(a < b2 && L::line_group(t, a) == g && L::line_group(t, b2 - 1) == g, "group_lines");
        nlines += b2 - a;
      }
      for (int64_t g = s.gp0; g < s.gp0 + s.nps; ++g) {
        int64_t a, b2;
        L::group_positions(t, c, g, &a, &b2);
        EXPECT(a < b2 && L::pos_group(t, a) == g && L::pos_group(t, b2 - 1) == g, "group_positions");
        npos += b2 - a;
      }
      EXPECT(s.nls == 0 || nlines == c.nl, "line groups cover the chunk's lines");
      EXPECT(s.nps == 0 || npos == c.nj, "position groups cover the chunk's positions");
    }
    // "does the chunk hold a masked channel": the O(1) counted test equals a scan of its groups
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<uint8_t> mk(tab.nchan);
      for (auto& x : mk) x = std::bernoulli_distribution(trial == 0 ? 0.02 : 0.3)(rng);
      std::vector<int32_t> prefix(tab.nchan + 1, 0);
      for (int64_t ch = 0; ch < tab.nchan; ++ch) prefix[ch + 1] = prefix[ch] + mk[ch];
      const bool* mb = reinterpret_cast<const bool*>(mk.data());
      for (int64_t k = 0; k < tab.nchunks; ++k) {
        const L::Chunk c = L::read_chunk(tab, k);
        const L::Tile t = L::read_tile(tab, c.tile);
        const L::ChunkSlots s = L::chunk_slots(t, c);
        bool scan = false;
        for (int64_t g = s.gl0; g < s.gl0 + s.nls; ++g) scan = scan || mb[L::line_group_channel(t, g)];
        for (int64_t g = s.gp0; g < s.gp0 + s.nps; ++g) scan = scan || mb[L::pos_group_channel(t, g)];
        EXPECT(L::chunk_has_masked(t, c, mb) == scan && L::chunk_has_masked_counted(t, c, prefix.data()) == scan,
               "chunk " << k << ": masked-channel tests disagree with a scan");
      }
    }
    for (const auto& [tile, cv] : cover)
      for (size_t e = 0; e < cv.size(); ++e) EXPECT(cv[e] == 1, "tile " << tile << " position " << e << " in " << cv[e] << " chunks");
    for (int64_t q = 0; q < tab.nslots; ++q) EXPECT(slot_used[q] == 1, "slot " << q << " used " << slot_used[q] << " times");
    ++nmodels;
  }
  // The CUDA lane mapping, for every chunk width and both vector sizes.
  int nlanes = 0;
  for (int64_t vec : {4, 8})
    for (int64_t nj = 1; nj <= L::kMaxChunkWidth; ++nj) {
      const int64_t threads = 256;
      const L::Lanes ln = L::chunk_lanes(nj, vec, threads);
      EXPECT(ln.group >= 1 && ln.group <= 32 && (32 % ln.group) == 0, "group " << ln.group);
      EXPECT(ln.segs * ln.group >= ln.nvec && ln.lpp >= 1 && ln.lpp * ln.segs * ln.group <= threads,
             "nj=" << nj << " vec=" << vec << ": segs " << ln.segs << " lpp " << ln.lpp);
      const int64_t max_nl = std::min<int64_t>(L::kMaxChunkLines, L::kMaxChunkElems / nj);
      EXPECT(max_nl * ln.segs <= L::kShLineFloats, "line sums of nj=" << nj << " exceed shared memory");
      EXPECT(ln.lpp * ln.nvec * vec <= threads * vec, "position sums exceed shared memory");
      std::vector<int> hit(ln.lpp * ln.nvec, 0);
      for (int64_t tid = 0; tid < threads; ++tid) {
        const L::LanePlace p = L::lane_place(ln, tid);
        // a lane group never straddles two warps, and its lanes are consecutive
        EXPECT(tid / 32 == (tid - p.li) / 32 && tid / 32 == (tid - p.li + ln.group - 1) / 32, "group straddles warps");
        if (p.active) hit[p.lo * ln.nvec + p.vp] += 1;
      }
      for (int h : hit) EXPECT(h == 1, "nj=" << nj << " vec=" << vec << ": a vector covered " << h << " times");
      ++nlanes;
    }
  std::printf("index: %d random tables, %d lane mappings\n", nmodels, nlanes);
}

// ---------------------------------------------------------------------------------------
void test_grouped_norms(std::mt19937& rng) {
  struct Case { int64_t nchan; int ntensors; int64_t maxdim; };
  const Case cases[] = {{1, 1, 1}, {8, 3, 8}, {24, 6, 12}, {40, 8, 40}, {300, 8, 64}};
  for (const auto& cs : cases)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Model m = random_model(rng, cs.nchan, cs.ntensors, cs.maxdim, dt);
      Stack out = call("grouped_norms", {m.ts, m.b.table, cs.nchan});
      EXPECT(out.size() == 2, "grouped_norms returned " << out.size() << " values");
      at::Tensor sq = out[0].toTensor(), sal = out[1].toTensor();
      EXPECT(sq.scalar_type() == at::kFloat && sal.scalar_type() == at::kFloat, "outputs must be fp32");
      EXPECT(sq.numel() == cs.nchan && sal.numel() == cs.nchan, "outputs must have nchan entries");
      std::vector<double> rsq, rsal;
      ref_norms(m.b, m.ts, rsq, rsal);
      for (int64_t c = 0; c < cs.nchan; ++c) {
        EXPECT(approx(sq[c].item<float>(), rsq[c], 1e-4, 1e-3),
               dtype_name(dt) << " nchan=" << cs.nchan << " c=" << c << " sumsq " << sq[c].item<float>() << " vs " << rsq[c]);
        EXPECT(approx(sal[c].item<float>(), rsal[c], 1e-4, 1e-3),
               dtype_name(dt) << " nchan=" << cs.nchan << " c=" << c << " saliency " << sal[c].item<float>() << " vs "
                              << rsal[c]);
      }
      Stack again = call("grouped_norms", {m.ts, m.b.table, cs.nchan});
      EXPECT(at::equal(again[0].toTensor(), sq) && at::equal(again[1].toTensor(), sal), "grouped_norms not deterministic");
    }
  // channels without any slice, and a layout without tensors
  {
    std::mt19937 r2(7);
    Built b = build(r2, 3, {}, {});
    Stack out = call("grouped_norms", {TL{}, b.table, int64_t{3}});
    EXPECT(at::equal(out[0].toTensor(), at::zeros({3})) && at::equal(out[1].toTensor(), at::zeros({3})),
           "channels without slices have zero norm and saliency");
    Built e = build(r2, 0, {}, {});
    out = call("grouped_norms", {TL{}, e.table, int64_t{0}});
    EXPECT(out[0].toTensor().numel() == 0, "an empty layout gives empty outputs");
  }
}

void test_group_lasso(std::mt19937& rng) {
  struct Case { int64_t nchan; int ntensors; int64_t maxdim; double zero_prob; };
  const Case cases[] = {{1, 1, 1, 0.0}, {16, 4, 10, 0.0}, {24, 6, 12, 0.3}, {300, 8, 64, 0.0}};
  const double reg = 0.37, eps = 1e-8;
  for (const auto& cs : cases)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Model m = random_model(rng, cs.nchan, cs.ntensors, cs.maxdim, dt, cs.zero_prob);
      std::vector<at::Tensor> gs;
      for (const auto& s : m.b.specs) gs.push_back(make_tensor(s, dt));
      std::vector<at::Tensor> g0;
      for (auto& g : gs) g0.push_back(g.to(at::kDouble));
      const IL frozen = random_frozen(rng, m.ts.size());
      at::Tensor mask = random_mask(rng, cs.nchan);
      const bool* mk = mask.data_ptr<bool>();
      Stack out = call("group_lasso_grad_", {m.ts, gs, m.b.table, mask, at::scalar_tensor(reg, at::kFloat), eps, frozen});
      std::vector<double> sq, sal;
      ref_norms(m.b, m.ts, sq, sal);
      std::vector<double> coef(cs.nchan, 0.0);
      double penalty = 0.0;
      for (int64_t c = 0; c < cs.nchan; ++c)
        if (mk[c]) {
          const double n = std::sqrt(sq[c]);
          coef[c] = reg / std::max(n, eps);
          penalty += n;
        }
      penalty *= reg;
      const at::Tensor pen = out[0].toTensor();
      EXPECT(pen.dim() == 0 && pen.scalar_type() == at::kFloat, "penalty must be a 0-d fp32 tensor");
      EXPECT(approx(pen.item<float>(), penalty, 1e-4, 1e-3), dtype_name(dt) << " penalty " << pen.item<float>() << " vs " << penalty);
      const double rtol = rtol_for(dt);
      for (size_t t = 0; t < m.ts.size(); ++t) {
        const auto& s = m.b.specs[t];
        const bool fz = std::find(frozen.begin(), frozen.end(), static_cast<int64_t>(t)) != frozen.end();
        at::Tensor w = m.ts[t].to(at::kDouble), g = gs[t].to(at::kDouble);
        const double* wp = w.data_ptr<double>();
        const double* gp = g.data_ptr<double>();
        const double* g0p = g0[t].data_ptr<double>();
        int bad = 0;
        for (int64_t o = 0; o < s.O; ++o)
          for (int64_t i = 0; i < s.I; ++i)
            for (int64_t k = 0; k < s.inner; ++k) {
              const int64_t e = s.index(o, i, k);
              const int64_t cc = s.col_chan(i);
              const double a = !fz && mk[s.row_chan(o)] ? coef[s.row_chan(o)] * wp[e] : 0.0;
              const double b = !fz && cc >= 0 && mk[cc] ? coef[cc] * wp[e] : 0.0;
              const double ref = g0p[e] + a + b;
              const double scale = std::fabs(g0p[e]) + std::fabs(a) + std::fabs(b);
              const bool ok = (a == 0 && b == 0) ? gp[e] == g0p[e] : approx(gp[e], ref, rtol, scale);
              if (!ok && bad++ < 3)
                EXPECT(false, dtype_name(dt) << " nchan=" << cs.nchan << " tensor " << t << (fz ? " (frozen)" : "")
                                             << " elem " << e << ": grad " << gp[e] << " vs " << ref);
            }
        EXPECT(bad == 0, bad << " wrong grad elements in tensor " << t);
        EXPECT(at::equal(w, m.ts[t].to(at::kDouble)), "weights must not change");
      }
    }
  // eps: an all-zero channel gives no NaN, leaves grads unchanged and adds no penalty
  {
    std::mt19937 r2(3);
    TensorSpec s;
    s.shape = {4, 3};
    s.O = 4;
    s.I = 3;
    s.rcount = 4;
    at::Tensor w = at::zeros({4, 3}), g = at::randn({4, 3});
    const at::Tensor g_before = g.clone();
    Built b = build(r2, 4, {s}, {w});
    Stack out = call("group_lasso_grad_", {TL{w}, TL{g}, b.table, at::ones({4}, at::kBool),
                                           at::scalar_tensor(1.0, at::kFloat), 1e-12, IL{}});
    EXPECT(at::equal(g, g_before), "zero channel: grads must stay unchanged");
    EXPECT(out[0].toTensor().item<float>() == 0.f, "zero channel: penalty must be 0");
  }
}

void test_scale_channels(std::mt19937& rng) {
  const int64_t sizes[] = {1, 16, 40, 300};
  for (int64_t nchan : sizes)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Model m = random_model(rng, nchan, nchan > 100 ? 8 : 5, nchan > 100 ? 64 : 10, dt);
      std::vector<at::Tensor> w0;
      for (auto& w : m.ts) w0.push_back(w.to(at::kDouble));
      at::Tensor mask = random_mask(rng, nchan);
      const bool* mk = mask.data_ptr<bool>();
      const IL frozen = random_frozen(rng, m.ts.size());
      const double f = 0.8125;  // exact in every dtype
      call("scale_channels_", {m.ts, m.b.table, mask, at::scalar_tensor(f, at::kFloat), frozen});
      const double rtol = rtol_for(dt);
      for (size_t t = 0; t < m.ts.size(); ++t) {
        const auto& s = m.b.specs[t];
        const bool fz = std::find(frozen.begin(), frozen.end(), static_cast<int64_t>(t)) != frozen.end();
        at::Tensor w = m.ts[t].to(at::kDouble);
        const double* wp = w.data_ptr<double>();
        const double* w0p = w0[t].data_ptr<double>();
        int bad = 0;
        for (int64_t o = 0; o < s.O; ++o)
          for (int64_t i = 0; i < s.I; ++i)
            for (int64_t k = 0; k < s.inner; ++k) {
              const int64_t e = s.index(o, i, k);
              double ref = w0p[e];
              if (!fz && mk[s.row_chan(o)]) ref *= f;
              if (!fz && s.col_chan(i) >= 0 && mk[s.col_chan(i)]) ref *= f;
              if (!approx(wp[e], ref, rtol, 0.0) && bad++ < 3)
                EXPECT(false, dtype_name(dt) << " tensor " << t << " elem " << e << ": " << wp[e] << " vs " << ref);
            }
        EXPECT(bad == 0, bad << " wrong elements in tensor " << t);
      }
    }
}

// Naive compaction of a [outer, size, inner] byte array.
std::vector<char> ref_compact(const at::Tensor& before, int64_t dim, const std::vector<int64_t>& keep) {
  int64_t outer = 1, inner = 1;
  const int64_t size = before.size(dim);
  for (int64_t i = 0; i < dim; ++i) outer *= before.size(i);
  for (int64_t i = dim + 1; i < before.dim(); ++i) inner *= before.size(i);
  const size_t es = before.element_size();
  const char* src = static_cast<const char*>(before.data_ptr());
  std::vector<char> out;
  for (int64_t a = 0; a < outer; ++a)
    for (int64_t j : keep)
      for (int64_t b = 0; b < inner; ++b)
        for (size_t x = 0; x < es; ++x) out.push_back(src[((a * size + j) * inner + b) * es + x]);
  (void)size;
  return out;
}

void test_compact(std::mt19937& rng) {
  auto rnd = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  int ncases = 0;
  for (int rep = 0; rep < 40; ++rep) {
    const int64_t ndim = rnd(1, 4);
    std::vector<int64_t> shape;
    for (int64_t i = 0; i < ndim; ++i) shape.push_back(rnd(1, 6));
    std::vector<int64_t> dims = {0, ndim - 1, -1};
    if (ndim > 1) dims.push_back(1);
    if (ndim > 2) dims.push_back(-2);
    for (int64_t dim : dims)
      for (int mode = 0; mode < 5; ++mode)
        for (at::ScalarType dt : {at::kFloat, at::kDouble, at::kLong, at::kHalf, at::kBool}) {
          const int64_t d = dim < 0 ? dim + ndim : dim;
          const int64_t size = shape[d];
          std::vector<int64_t> keep;
          if (mode == 0) {  // random subset
            for (int64_t j = 0; j < size; ++j)
              if (rnd(0, 1)) keep.push_back(j);
          } else if (mode == 1) {  // keep all
            for (int64_t j = 0; j < size; ++j) keep.push_back(j);
          } else if (mode == 2) {  // keep one: first, last or a middle one
            keep.push_back(rnd(0, size - 1));
          } else if (mode == 3) {  // keep the last
            keep.push_back(size - 1);
          } else {  // keep none
          }
          at::Tensor t = dt == at::kBool ? (at::rand(shape) > 0.5) : (at::arange(c10::multiply_integers(shape), at::kDouble) * 1.5 - 7).view(shape).to(dt);
          t = t.contiguous();
          const at::Tensor before = t.clone();
          const void* ptr = t.data_ptr();
          const std::vector<char> ref = ref_compact(before, d, keep);
          call("compact_", {t, dim, at::tensor(keep, at::kLong)});
          EXPECT(t.data_ptr() == ptr && t.sizes() == before.sizes(), "compact_ must work in place");
          EXPECT(ref.empty() || std::memcmp(t.data_ptr(), ref.data(), ref.size()) == 0,
                "compact_ " << dtype_name(dt) << " shape " << before.sizes() << " dim " << dim << " keep n=" << keep.size()
                            << " mode " << mode << " wrong");
          if (mode == 1) EXPECT(at::equal(t, before), "keep-all must leave the tensor unchanged");
          // the narrowed view the Python wrapper returns equals index_select
          std::vector<int64_t> nshape = shape;
          nshape[d] = static_cast<int64_t>(keep.size());
          const int64_t nnum = c10::multiply_integers(nshape);
          at::Tensor narrowed = t.view(-1).narrow(0, 0, nnum).view(nshape);
          EXPECT(at::equal(narrowed, before.index_select(d, at::tensor(keep, at::kLong))),
                "narrowed result differs from index_select, shape " << before.sizes() << " dim " << dim);
          ++ncases;
        }
  }
  std::printf("compact_: %d cases\n", ncases);

  // compact_many_: one tensor along two dims in one pass (two consecutive entries), next to
  // another tensor; the narrowed views must equal index_select along both dims.
  int nmany = 0;
  auto subset = [&](int64_t size, int mode) {
    std::vector<int64_t> k;
    for (int64_t j = 0; j < size; ++j)
      if (mode == 1 || (mode == 0 && rnd(0, 1)) || (mode == 2 && j == size - 1)) k.push_back(j);
    return k;  // mode 3: keep none
  };
  for (int rep = 0; rep < 80; ++rep) {
    const int64_t ndim = rnd(2, 4);
    std::vector<int64_t> shape;
    for (int64_t i = 0; i < ndim; ++i) shape.push_back(rnd(1, 6));
    const int64_t d0 = rnd(0, ndim - 2), d1 = rnd(d0 + 1, ndim - 1);
    const std::vector<int64_t> k0 = subset(shape[d0], rep % 4), k1 = subset(shape[d1], (rep / 4) % 4);
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kLong, at::kBool}) {
      at::Tensor t = dt == at::kBool ? (at::rand(shape) > 0.5)
                                     : (at::arange(c10::multiply_integers(shape), at::kDouble) * 1.5 - 7).view(shape).to(dt);
      at::Tensor other = at::randn({7});
      const at::Tensor before = t.clone(), other_before = other.clone();
      const at::Tensor k0t = at::tensor(k0, at::kLong), k1t = at::tensor(k1, at::kLong);
      const at::Tensor kot = at::tensor(std::vector<int64_t>{1, 3}, at::kLong);
      call("compact_many_", {std::vector<at::Tensor>{t, t, other}, std::vector<int64_t>{d0, d1, 0},
                             std::vector<at::Tensor>{k0t, k1t, kot}});
      std::vector<int64_t> nshape = shape;
      nshape[d0] = static_cast<int64_t>(k0.size());
      nshape[d1] = static_cast<int64_t>(k1.size());
      const at::Tensor narrowed = t.view(-1).narrow(0, 0, c10::multiply_integers(nshape)).view(nshape);
      EXPECT(at::equal(narrowed, before.index_select(d0, k0t).index_select(d1, k1t)),
             "compact_many_ two dims " << d0 << "," << d1 << " of " << before.sizes() << " " << dtype_name(dt));
      EXPECT(at::equal(other.narrow(0, 0, 2), other_before.index_select(0, kot)), "compact_many_ second tensor");
      ++nmany;
    }
  }
  std::printf("compact_many_: %d cases\n", nmany);
}

// A table with one entry changed (a fresh tensor each time, so the check cache is not involved).
at::Tensor corrupt(const at::Tensor& table, int64_t index, int64_t value) {
  at::Tensor t = table.clone();
  t.data_ptr<int64_t>()[index] = value;
  return t;
}

void test_errors() {
  std::mt19937 rng(11);
  // tensor 0: a [4, 3] linear (rows: channels 0..3, columns 0..2: channels 4..6)
  TensorSpec s;
  s.shape = {4, 3};
  s.O = 4;
  s.I = 3;
  s.rcount = 4;
  s.col_off = 4;
  s.c0 = 0;
  s.nc = 3;
  at::Tensor w = at::randn({4, 3});
  at::Tensor g = at::randn({4, 3});
  Limits fixed;
  fixed.random = false;  // one chunk: lines 0..3, positions 0..2, slots 0..6
  const Built b = build(rng, 7, {s}, {w}, fixed);
  const at::Tensor table = b.table;
  const int64_t n = 7;
  auto norms = [&](TL ts, at::Tensor tab) { call("grouped_norms", {ts, tab, n}); };
  norms(TL{w}, table);  // the good call works

  CHECK_THROWS("only float32, float16 and bfloat16", [&] { norms(TL{w.to(at::kInt)}, table); });
  CHECK_THROWS("only float32, float16 and bfloat16", [&] { norms(TL{w.to(at::kDouble)}, table); });
  CHECK_THROWS("call layout.rebuild()", [&] { norms(TL{at::randn({5, 3})}, table); });
  CHECK_THROWS("call layout.rebuild()", [&] { norms(TL{w.view({3, 4})}, table); });  // same numel
  CHECK_THROWS("memory format changed", [&] { norms(TL{at::randn({3, 4}).t()}, table); });  // other strides
  CHECK_THROWS("the layout describes 1", [&] { norms(TL{w, w}, table); });
  CHECK_THROWS("nchan is 8", [&] { call("grouped_norms", {TL{w}, table, int64_t{8}}); });
  CHECK_THROWS("1-d int64 CPU tensor", [&] { norms(TL{w}, table.to(at::kInt)); });
  CHECK_THROWS("1-d int64 CPU tensor", [&] { norms(TL{w}, table.view({1, -1})); });
  // corrupted tables: refused before any memory is touched
  const L::Table v = L::table_view(table.data_ptr<int64_t>());
  const int64_t tiles = v.tiles - table.data_ptr<int64_t>(), chunks = v.chunks - table.data_ptr<int64_t>();
  const int64_t cptr = v.cptr - table.data_ptr<int64_t>(), entries = v.entries - table.data_ptr<int64_t>();
  CHECK_THROWS("not a oneprune layout table", [&] { norms(TL{w}, corrupt(table, 0, 1)); });
  CHECK_THROWS("not a oneprune layout table", [&] { norms(TL{w}, corrupt(table, 1, 2)); });
  CHECK_THROWS("its counts need", [&] { norms(TL{w}, table.narrow(0, 0, table.numel() - 1).clone()); });
  CHECK_THROWS("reaches past the end", [&] { norms(TL{w}, corrupt(table, tiles + 1, 1)); });       // base
  CHECK_THROWS("reaches past the end", [&] { norms(TL{w}, corrupt(table, tiles + 2, 5)); });       // lines
  CHECK_THROWS("names tensor", [&] { norms(TL{w}, corrupt(table, tiles + 0, 1)); });
  CHECK_THROWS("outside [0, 7)", [&] { norms(TL{w}, corrupt(table, tiles + 5, 4)); });             // lchan0
  CHECK_THROWS("outside [0, 7)", [&] { norms(TL{w}, corrupt(table, tiles + 8, 5)); });             // pchan0
  CHECK_THROWS("outside [0, 7)", [&] { norms(TL{w}, corrupt(table, tiles + 6, 0)); });             // ldiv
  CHECK_THROWS("outside its tile", [&] { norms(TL{w}, corrupt(table, chunks + 2, 5)); });          // nl
  CHECK_THROWS("outside its tile", [&] { norms(TL{w}, corrupt(table, chunks + 3, 1)); });          // j0
  CHECK_THROWS("names tile", [&] { norms(TL{w}, corrupt(table, chunks + 0, 3)); });
  CHECK_THROWS("writes slots past", [&] { norms(TL{w}, corrupt(table, chunks + 5, 1)); });         // slot0
  CHECK_THROWS("do not span", [&] { norms(TL{w}, corrupt(table, cptr + n, 0)); });
  CHECK_THROWS("decrease", [&] { norms(TL{w}, corrupt(table, cptr + 1, 5)); });
  CHECK_THROWS("names slot", [&] { norms(TL{w}, corrupt(table, entries, 99)); });
  CHECK_THROWS("not dense", [&] { norms(TL{w}, corrupt(table, L::kHeaderLen + 2 + L::kMaxDims, 5)); });
  // a table changed in place after it was checked is checked again
  {
    at::Tensor t2 = table.clone();
    norms(TL{w}, t2);
    t2.index_put_({tiles + 2}, 5);  // bumps the version counter
    CHECK_THROWS("reaches past the end", [&] { norms(TL{w}, t2); });
  }

  auto lasso = [&](TL ws, TL gs, at::Tensor mask, at::Tensor reg, double eps, IL frozen) {
    call("group_lasso_grad_", {ws, gs, table, mask, reg, eps, frozen});
  };
  const at::Tensor mask = at::ones({n}, at::kBool), reg = at::scalar_tensor(0.1, at::kFloat);
  lasso(TL{w}, TL{g}, mask, reg, 1e-8, IL{});
  lasso(TL{w}, TL{at::empty({0})}, mask, reg, 1e-8, IL{0});  // frozen: its grad entry is ignored
  CHECK_THROWS("same shape, dtype and device", [&] { lasso(TL{w}, TL{at::randn({3, 4})}, mask, reg, 1e-8, IL{}); });
  CHECK_THROWS("same shape, dtype and device", [&] { lasso(TL{w}, TL{g.to(at::kHalf)}, mask, reg, 1e-8, IL{}); });
  CHECK_THROWS("a different memory format", [&] { lasso(TL{w}, TL{at::randn({3, 4}).t()}, mask, reg, 1e-8, IL{}); });
  CHECK_THROWS("grads for", [&] { lasso(TL{w}, TL{}, mask, reg, 1e-8, IL{}); });
  CHECK_THROWS("one entry per channel", [&] { lasso(TL{w}, TL{g}, at::ones({3}, at::kBool), reg, 1e-8, IL{}); });
  CHECK_THROWS("bool vector", [&] { lasso(TL{w}, TL{g}, at::ones({n}, at::kInt), reg, 1e-8, IL{}); });
  CHECK_THROWS("reg must be a float32", [&] { lasso(TL{w}, TL{g}, mask, at::scalar_tensor(0.1, at::kDouble), 1e-8, IL{}); });
  CHECK_THROWS("reg must be a float32", [&] { lasso(TL{w}, TL{g}, mask, at::ones({2}), 1e-8, IL{}); });
  CHECK_THROWS("reg must be finite", [&] { lasso(TL{w}, TL{g}, mask, at::scalar_tensor(NAN, at::kFloat), 1e-8, IL{}); });
  CHECK_THROWS("reg must be finite", [&] { lasso(TL{w}, TL{g}, mask, at::scalar_tensor(INFINITY, at::kFloat), 1e-8, IL{}); });
  CHECK_THROWS("eps must be positive", [&] { lasso(TL{w}, TL{g}, mask, reg, 0.0, IL{}); });
  CHECK_THROWS("eps must be positive", [&] { lasso(TL{w}, TL{g}, mask, reg, INFINITY, IL{}); });
  CHECK_THROWS("frozen index 1", [&] { lasso(TL{w}, TL{g}, mask, reg, 1e-8, IL{1}); });

  auto scale = [&](TL ws, at::Tensor mask, at::Tensor f, IL frozen) { call("scale_channels_", {ws, table, mask, f, frozen}); };
  scale(TL{w.clone()}, mask, at::scalar_tensor(0.5, at::kFloat), IL{});
  {
    at::Tensor w2 = w.clone();
    scale(TL{w2}, mask, at::scalar_tensor(0.5, at::kFloat), IL{0});
    EXPECT(at::equal(w2, w), "a frozen tensor is not scaled");
  }
  CHECK_THROWS("factor must be a float32", [&] { scale(TL{w}, mask, at::ones({2}), IL{}); });
  CHECK_THROWS("factor must be finite", [&] { scale(TL{w}, mask, at::scalar_tensor(NAN, at::kFloat), IL{}); });
  CHECK_THROWS("one entry per channel", [&] { scale(TL{w}, at::ones({5}, at::kBool), at::scalar_tensor(0.5, at::kFloat), IL{}); });
  CHECK_THROWS("only float32", [&] { scale(TL{w.to(at::kLong)}, mask, at::scalar_tensor(0.5, at::kFloat), IL{}); });
  {  // a refused call changes nothing
    at::Tensor w2 = w.clone();
    CHECK_THROWS("reaches past the end", [&] {
      call("scale_channels_", {TL{w2}, corrupt(table, tiles + 2, 5), mask, at::scalar_tensor(0.5, at::kFloat), IL{}});
    });
    EXPECT(at::equal(w2, w), "a refused scale_channels_ must leave the tensor unchanged");
  }

  auto compact = [&](at::Tensor t, int64_t dim, at::Tensor keep) { call("compact_", {t, dim, keep}); };
  const at::Tensor keep = at::tensor(std::vector<int64_t>{0, 2}, at::kLong);
  CHECK_THROWS("out of range", [&] { compact(at::randn({4, 3}), 2, keep); });
  CHECK_THROWS("out of range", [&] { compact(at::randn({4, 3}), -3, keep); });
  CHECK_THROWS("int64 vector", [&] { compact(at::randn({4, 3}), 0, keep.to(at::kInt)); });
  CHECK_THROWS("indices but dim", [&] { compact(at::randn({4, 3}), 1, at::tensor(std::vector<int64_t>{0, 1, 2, 2}, at::kLong)); });
  CHECK_THROWS("must be contiguous", [&] { compact(at::randn({3, 4}).t(), 0, keep); });
  CHECK_THROWS("at least one dimension", [&] { compact(at::scalar_tensor(1.0), 0, keep); });
  // two distinct empty tensors are two entries, not one tensor named twice
  call("compact_many_", {TL{at::empty({0}), at::empty({0})}, IL{0, 0}, TL{at::empty({0}, at::kLong), at::empty({0}, at::kLong)}});
  // dim out of range is an IndexError, the others ValueErrors (what Python users see)
  try {
    compact(at::randn({4, 3}), 5, keep);
    EXPECT(false, "no throw");
  } catch (const c10::IndexError&) {
    ++g_checks;
  } catch (const c10::Error& e) {
    EXPECT(false, "expected c10::IndexError, got " << e.what_without_backtrace());
  }
  try {
    norms(TL{at::randn({5, 3})}, table);
    EXPECT(false, "no throw");
  } catch (const c10::ValueError&) {
    ++g_checks;
  } catch (const c10::Error& e) {
    EXPECT(false, "expected c10::ValueError, got " << e.what_without_backtrace());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s path/to/liboneprune_ops.so [test|all]\n", argv[0]);
    return 2;
  }
  const std::string which = argc > 2 ? argv[2] : "all";
  std::mt19937 rng(1234);
  at::manual_seed(1234);
  if (which == "index") {  // the shared index math alone: no library needed
    test_index(rng);
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
  }
  // RTLD_NOW like torch.ops.load_library (ctypes): every symbol must resolve. The
  // library's PyInit__C needs libpython's symbols, which this executable links.
  void* handle = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "dlopen(%s) failed: %s\n", argv[1], dlerror());
    return 1;
  }
  std::printf("loaded %s (host python %.6s, torch %s)\n", argv[1], Py_GetVersion(), TORCH_VERSION);
  for (const char* op : {"grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_", "compact_many_"}) {
    const auto name = std::string("oneprune::") + op;
    const auto h = c10::Dispatcher::singleton().findSchema({name.c_str(), ""});
    EXPECT(h.has_value(), name << " has no schema");
    if (h) EXPECT(h->hasKernelForDispatchKey(c10::DispatchKey::CPU), name << " has no CPU kernel");
  }
  const std::vector<std::pair<std::string, std::function<void()>>> tests = {
      {"index", [&] { test_index(rng); }},
      {"grouped_norms", [&] { test_grouped_norms(rng); }},
      {"group_lasso", [&] { test_group_lasso(rng); }},
      {"scale_channels", [&] { test_scale_channels(rng); }},
      {"compact", [&] { test_compact(rng); }},
      {"errors", [&] { test_errors(); }},
  };
  bool ran = false;
  for (const auto& [name, fn] : tests) {
    if (which != "all" && which != name) continue;
    ran = true;
    const int before = g_failures;
    try {
      fn();
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, name.c_str(), std::string("unexpected exception: ") + e.what());
    }
    std::printf("%-16s %s\n", name.c_str(), g_failures == before ? "ok" : "FAILED");
  }
  if (!ran) {
    std::fprintf(stderr, "unknown test '%s'\n", which.c_str());
    return 2;
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
