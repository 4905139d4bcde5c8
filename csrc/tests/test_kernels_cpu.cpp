// C++ tests of the CPU kernels of liboneprune_ops.so, run by ctest.
//
//   test_kernels_cpu <path/to/liboneprune_ops.so> [grouped_norms|group_lasso|scale_channels|compact|errors|all]
//
// The library is loaded with dlopen(RTLD_NOW), as torch.ops.load_library does, and the ops
// are called boxed through the dispatcher (exactly how Python calls them). Every result is
// checked against naive loops over the tensors' shapes written here, independent of the
// segment table: a channel owns row o of a tensor (phase 0) and/or column i (phase 1).
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
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

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

// Boxed call of oneprune::<name> through the dispatcher; returns the output stack. `args`
// follow the schema without `runs`; where the schema has a `runs` argument (the per-slice
// form of the layout, see oneprune.h), `runs` is inserted at its place.
Stack call(const char* name, Stack args, const at::Tensor& runs = at::Tensor()) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow((std::string("oneprune::") + name).c_str(), "");
  const auto& schema_args = op.schema().arguments();
  for (size_t i = 0; i < schema_args.size(); ++i)
    if (schema_args[i].name() == "runs") {
      TORCH_CHECK(runs.defined(), "test bug: ", name, " takes runs but none was given");
      args.insert(args.begin() + static_cast<std::ptrdiff_t>(i), runs);
    }
  op.callBoxed(&args);
  return args;
}

const char* dtype_name(at::ScalarType t) { return c10::toString(t); }

// ---------------------------------------------------------------------------------------
// A random "model": tensors seen as [O, I, inner]; channel row_off+o owns row o (phase 0)
// and channel col_off+i owns column i (phase 1) when col_off >= 0.
struct TensorSpec {
  std::vector<int64_t> shape;
  int64_t O, I, inner;
  int64_t row_off, col_off;
};

struct Layout {
  int64_t nchan = 0, nphase = 2;
  std::vector<TensorSpec> specs;
  at::Tensor segs, seg_ptr;
  at::Tensor runs;  // int64 [nrun, 8]: tensor, chan0, count, base, rows, row_len, row_stride, phase
  std::vector<int64_t> numels;
};

Layout make_layout(std::mt19937& rng, int64_t nchan, int ntensors, int64_t maxdim, bool one_phase = false) {
  Layout L;
  L.nchan = nchan;
  L.nphase = one_phase ? 1 : 2;
  auto rnd = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int t = 0; t < ntensors; ++t) {
    TensorSpec s;
    const int kind = t == 0 && !one_phase ? 3 : static_cast<int>(rnd(0, 2));  // tensor 0: square, row and column of the same channels
    s.O = rnd(1, std::min(maxdim, nchan));
    s.I = rnd(1, std::min(maxdim, nchan));
    if (kind == 0) {  // bias / BN vector
      s.shape = {s.O};
      s.I = 1;
      s.inner = 1;
    } else if (kind == 1) {  // linear
      s.shape = {s.O, s.I};
      s.inner = 1;
    } else if (kind == 2) {  // conv
      const int64_t kh = rnd(1, 3), kw = rnd(1, 3);
      s.shape = {s.O, s.I, kh, kw};
      s.inner = kh * kw;
    } else {  // square conv whose rows and columns are the same channels (residual coupling)
      s.I = s.O;
      s.shape = {s.O, s.O, 3, 1};
      s.inner = 3;
    }
    s.row_off = rnd(0, nchan - s.O);
    s.col_off = -1;
    if (!one_phase && s.shape.size() >= 2) {
      if (kind == 3)
        s.col_off = s.row_off;
      else if (rnd(0, 3) > 0)
        s.col_off = rnd(0, nchan - s.I);
    }
    L.specs.push_back(s);
    L.numels.push_back(s.O * s.I * s.inner);
  }
  // The same slices as runs: all rows of a tensor are one run, all its columns another.
  std::vector<std::array<int64_t, 8>> runs;
  for (int64_t t = 0; t < (int64_t)L.specs.size(); ++t) {
    const auto& s = L.specs[t];
    runs.push_back({t, s.row_off, s.O, 0, 1, s.I * s.inner, s.I * s.inner, 0});
  }
  for (int64_t t = 0; t < (int64_t)L.specs.size(); ++t) {
    const auto& s = L.specs[t];
    if (s.col_off >= 0) runs.push_back({t, s.col_off, s.I, 0, s.O, s.inner, s.I * s.inner, 1});
  }
  L.runs = at::empty({(int64_t)runs.size(), 8}, at::kLong);
  auto ra = L.runs.accessor<int64_t, 2>();
  for (size_t k = 0; k < runs.size(); ++k)
    for (int j = 0; j < 8; ++j) ra[k][j] = runs[k][j];
  // (phase, channel, tensor, base, rows, len, stride)
  std::vector<std::array<int64_t, 7>> raw;
  for (size_t t = 0; t < L.specs.size(); ++t) {
    const auto& s = L.specs[t];
    for (int64_t o = 0; o < s.O; ++o) {
      // A row is contiguous: describe it as 1 row of I*inner, or as I rows of `inner`.
      if (rnd(0, 1) == 0)
        raw.push_back({0, s.row_off + o, (int64_t)t, o * s.I * s.inner, 1, s.I * s.inner, s.I * s.inner});
      else
        raw.push_back({0, s.row_off + o, (int64_t)t, o * s.I * s.inner, s.I, s.inner, s.inner});
    }
    if (s.col_off >= 0)
      for (int64_t i = 0; i < s.I; ++i)
        raw.push_back({1, s.col_off + i, (int64_t)t, i * s.inner, s.O, s.inner, s.I * s.inner});
  }
  std::stable_sort(raw.begin(), raw.end(), [](const auto& a, const auto& b) {
    return std::tie(a[0], a[1]) < std::tie(b[0], b[1]);
  });
  L.segs = at::empty({(int64_t)raw.size(), 5}, at::kLong);
  L.seg_ptr = at::zeros({L.nphase, nchan + 1}, at::kLong);
  auto sg = L.segs.accessor<int64_t, 2>();
  auto sp = L.seg_ptr.accessor<int64_t, 2>();
  for (size_t k = 0; k < raw.size(); ++k) {
    for (int j = 0; j < 5; ++j) sg[k][j] = raw[k][2 + j];
    sp[raw[k][0]][raw[k][1] + 1] += 1;
  }
  // prefix sums, phases laid one after the other in segs
  int64_t acc = 0;
  for (int64_t p = 0; p < L.nphase; ++p) {
    sp[p][0] = acc;
    for (int64_t c = 1; c <= nchan; ++c) sp[p][c] += sp[p][c - 1];
    acc = sp[p][nchan];
  }
  return L;
}

std::vector<at::Tensor> make_tensors(const Layout& L, at::ScalarType dt, double zero_prob = 0.0) {
  std::vector<at::Tensor> ts;
  for (const auto& s : L.specs) {
    at::Tensor t = at::randn(s.shape, at::kFloat);
    if (zero_prob > 0) t = t * (at::rand(s.shape) >= zero_prob).to(at::kFloat);
    ts.push_back(t.to(dt).contiguous());
  }
  return ts;
}

// Naive per-channel sum of squares and saliency, in double, from the shapes.
void ref_norms(const Layout& L, const std::vector<at::Tensor>& ts, std::vector<double>& sq, std::vector<double>& sal) {
  sq.assign(L.nchan, 0.0);
  sal.assign(L.nchan, 0.0);
  std::vector<int64_t> m(L.nchan, 0);
  for (size_t t = 0; t < ts.size(); ++t) {
    const auto& s = L.specs[t];
    at::Tensor w = ts[t].to(at::kDouble).contiguous();
    const double* p = w.data_ptr<double>();
    std::vector<double> rows(s.O, 0.0), cols(s.I, 0.0);
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t i = 0; i < s.I; ++i)
        for (int64_t k = 0; k < s.inner; ++k) {
          const double v = p[(o * s.I + i) * s.inner + k];
          rows[o] += v * v;
          cols[i] += v * v;
        }
    for (int64_t o = 0; o < s.O; ++o) {
      sq[s.row_off + o] += rows[o];
      sal[s.row_off + o] += rows[o] / std::sqrt(double(s.I * s.inner));
      m[s.row_off + o] += 1;
    }
    if (s.col_off >= 0)
      for (int64_t i = 0; i < s.I; ++i) {
        sq[s.col_off + i] += cols[i];
        sal[s.col_off + i] += cols[i] / std::sqrt(double(s.O * s.inner));
        m[s.col_off + i] += 1;
      }
  }
  for (int64_t c = 0; c < L.nchan; ++c) sal[c] = m[c] > 0 ? sal[c] / double(m[c]) : 0.0;
}

double rtol_for(at::ScalarType dt) { return dt == at::kFloat ? 2e-5 : (dt == at::kHalf ? 3e-3 : 2.5e-2); }

bool approx(double got, double ref, double rtol, double scale) {
  return std::isfinite(got) && std::fabs(got - ref) <= rtol * std::max(std::fabs(ref), scale) + 1e-6;
}

// runs of the hand-made 4-channel layout of a [4, 3] tensor (channel c owns row c)
at::Tensor rows_4x3_runs() { return at::tensor({0, 0, 4, 0, 1, 3, 3, 0}, at::kLong).view({1, 8}); }

at::Tensor random_mask(std::mt19937& rng, int64_t n) {
  at::Tensor m = at::empty({n}, at::kBool);
  for (int64_t c = 0; c < n; ++c) m.data_ptr<bool>()[c] = std::bernoulli_distribution(0.6)(rng);
  return m;
}

// ---------------------------------------------------------------------------------------
void test_grouped_norms(std::mt19937& rng) {
  struct Case { int64_t nchan; int ntensors; int64_t maxdim; bool one_phase; };
  const Case cases[] = {{1, 1, 1, false}, {8, 3, 8, false}, {24, 6, 12, false}, {24, 5, 12, true}, {300, 8, 64, false}};
  for (const auto& cs : cases)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Layout L = make_layout(rng, cs.nchan, cs.ntensors, cs.maxdim, cs.one_phase);
      auto ts = make_tensors(L, dt);
      Stack out = call("grouped_norms", {ts, L.numels, L.segs, L.seg_ptr}, L.runs);
      EXPECT(out.size() == 2, "grouped_norms returned " << out.size() << " values");
      at::Tensor sq = out[0].toTensor(), sal = out[1].toTensor();
      EXPECT(sq.scalar_type() == at::kFloat && sal.scalar_type() == at::kFloat, "outputs must be fp32");
      EXPECT(sq.numel() == cs.nchan && sal.numel() == cs.nchan, "outputs must have nchan entries");
      std::vector<double> rsq, rsal;
      ref_norms(L, ts, rsq, rsal);
      // values are exact in every dtype, only fp32 accumulation differs
      for (int64_t c = 0; c < cs.nchan; ++c) {
        EXPECT(approx(sq[c].item<float>(), rsq[c], 1e-4, 1e-3),
              dtype_name(dt) << " nchan=" << cs.nchan << " c=" << c << " sumsq " << sq[c].item<float>() << " vs " << rsq[c]);
        EXPECT(approx(sal[c].item<float>(), rsal[c], 1e-4, 1e-3),
              dtype_name(dt) << " nchan=" << cs.nchan << " c=" << c << " saliency " << sal[c].item<float>() << " vs " << rsal[c]);
      }
      // deterministic: bit-identical on a second call
      Stack again = call("grouped_norms", {ts, L.numels, L.segs, L.seg_ptr}, L.runs);
      EXPECT(at::equal(again[0].toTensor(), sq) && at::equal(again[1].toTensor(), sal), "grouped_norms not deterministic");
    }
  // no channels at all / no segments
  {
    at::Tensor w = at::randn({3});
    Stack out = call("grouped_norms", {std::vector<at::Tensor>{w}, std::vector<int64_t>{3},
                                       at::empty({0, 5}, at::kLong), at::zeros({1, 1}, at::kLong)},
               at::empty({0, 8}, at::kLong));
    EXPECT(out[0].toTensor().numel() == 0, "empty layout gives empty outputs");
    out = call("grouped_norms", {std::vector<at::Tensor>{w}, std::vector<int64_t>{3}, at::empty({0, 5}, at::kLong),
                                 at::zeros({2, 4}, at::kLong)},
               at::empty({0, 8}, at::kLong));
    EXPECT(at::equal(out[0].toTensor(), at::zeros({3})) && at::equal(out[1].toTensor(), at::zeros({3})),
          "channels without segments have zero norm and saliency");
  }
}

void test_group_lasso(std::mt19937& rng) {
  struct Case { int64_t nchan; int ntensors; int64_t maxdim; double zero_prob; };
  const Case cases[] = {{1, 1, 1, 0.0}, {16, 4, 10, 0.0}, {24, 6, 12, 0.3}, {300, 8, 64, 0.0}};
  const double reg = 0.37, eps = 1e-8;
  for (const auto& cs : cases)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Layout L = make_layout(rng, cs.nchan, cs.ntensors, cs.maxdim);
      auto ws = make_tensors(L, dt, cs.zero_prob);
      auto gs = make_tensors(L, dt);
      std::vector<at::Tensor> g0;
      for (auto& g : gs) g0.push_back(g.to(at::kDouble));
      at::Tensor mask = random_mask(rng, cs.nchan);
      const bool* mk = mask.data_ptr<bool>();
      Stack out = call("group_lasso_grad_", {ws, gs, L.numels, L.segs, L.seg_ptr, mask,
                                             at::scalar_tensor(reg, at::kFloat), eps},
                            L.runs);
      std::vector<double> sq, sal;
      ref_norms(L, ws, sq, sal);
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
      for (size_t t = 0; t < ws.size(); ++t) {
        const auto& s = L.specs[t];
        at::Tensor w = ws[t].to(at::kDouble), g = gs[t].to(at::kDouble);
        const double* wp = w.data_ptr<double>();
        const double* gp = g.data_ptr<double>();
        const double* g0p = g0[t].data_ptr<double>();
        int bad = 0;
        for (int64_t o = 0; o < s.O; ++o)
          for (int64_t i = 0; i < s.I; ++i)
            for (int64_t k = 0; k < s.inner; ++k) {
              const int64_t e = (o * s.I + i) * s.inner + k;
              const double a = mk[s.row_off + o] ? coef[s.row_off + o] * wp[e] : 0.0;
              const double b = s.col_off >= 0 && mk[s.col_off + i] ? coef[s.col_off + i] * wp[e] : 0.0;
              const double ref = g0p[e] + a + b;
              const double scale = std::fabs(g0p[e]) + std::fabs(a) + std::fabs(b);
              if (!approx(gp[e], ref, rtol, scale) && bad++ < 3)
                EXPECT(false, dtype_name(dt) << " nchan=" << cs.nchan << " tensor " << t << " elem " << e << ": grad "
                                            << gp[e] << " vs " << ref);
            }
        EXPECT(bad == 0, bad << " wrong grad elements in tensor " << t);
        EXPECT(at::equal(w, ws[t].to(at::kDouble)), "weights must not change");
      }
    }
  // eps: an all-zero channel gives no NaN, leaves grads unchanged and adds no penalty
  {
    at::Tensor w = at::zeros({4, 3}), g = at::randn({4, 3});
    at::Tensor g_before = g.clone();
    at::Tensor segs = at::tensor({0, 0, 1, 3, 3, 0, 3, 1, 3, 3, 0, 6, 1, 3, 3, 0, 9, 1, 3, 3}, at::kLong).view({4, 5});
    at::Tensor seg_ptr = at::tensor({0, 1, 2, 3, 4}, at::kLong).view({1, 5});
    Stack out = call("group_lasso_grad_", {std::vector<at::Tensor>{w}, std::vector<at::Tensor>{g}, std::vector<int64_t>{12},
                                           segs, seg_ptr, at::ones({4}, at::kBool), at::scalar_tensor(1.0, at::kFloat), 1e-12},
                            rows_4x3_runs());
    EXPECT(at::equal(g, g_before), "zero channel: grads must stay unchanged");
    EXPECT(out[0].toTensor().item<float>() == 0.f, "zero channel: penalty must be 0");
  }
}

void test_scale_channels(std::mt19937& rng) {
  const int64_t sizes[] = {1, 16, 300};
  for (int64_t nchan : sizes)
    for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
      Layout L = make_layout(rng, nchan, nchan > 100 ? 8 : 5, nchan > 100 ? 64 : 10);
      auto ws = make_tensors(L, dt);
      std::vector<at::Tensor> w0;
      for (auto& w : ws) w0.push_back(w.to(at::kDouble));
      at::Tensor mask = random_mask(rng, nchan);
      const bool* mk = mask.data_ptr<bool>();
      const double f = 0.8125;  // exact in every dtype
      call("scale_channels_", {ws, L.numels, L.segs, L.seg_ptr, mask, at::scalar_tensor(f, at::kFloat)}, L.runs);
      const double rtol = rtol_for(dt);
      for (size_t t = 0; t < ws.size(); ++t) {
        const auto& s = L.specs[t];
        at::Tensor w = ws[t].to(at::kDouble);
        const double* wp = w.data_ptr<double>();
        const double* w0p = w0[t].data_ptr<double>();
        int bad = 0;
        for (int64_t o = 0; o < s.O; ++o)
          for (int64_t i = 0; i < s.I; ++i)
            for (int64_t k = 0; k < s.inner; ++k) {
              const int64_t e = (o * s.I + i) * s.inner + k;
              double ref = w0p[e];
              if (mk[s.row_off + o]) ref *= f;
              if (s.col_off >= 0 && mk[s.col_off + i]) ref *= f;
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

void test_errors() {
  at::Tensor w = at::randn({4, 3});
  at::Tensor g = at::randn({4, 3});
  at::Tensor segs = at::tensor({0, 0, 1, 3, 3, 0, 3, 1, 3, 3, 0, 6, 1, 3, 3, 0, 9, 1, 3, 3}, at::kLong).view({4, 5});
  at::Tensor seg_ptr = at::tensor({0, 1, 2, 3, 4}, at::kLong).view({1, 5});
  const std::vector<int64_t> numels = {12};
  using TL = std::vector<at::Tensor>;
  using IL = std::vector<int64_t>;
  const at::Tensor runs = rows_4x3_runs();
  auto norms = [&](TL ts, IL n, at::Tensor s, at::Tensor sp) { call("grouped_norms", {ts, n, s, sp}, runs); };
  // the good call works
  norms(TL{w}, numels, segs, seg_ptr);

  CHECK_THROWS("only float32, float16 and bfloat16", [&] { norms(TL{w.to(at::kInt)}, numels, segs, seg_ptr); });
  CHECK_THROWS("only float32, float16 and bfloat16", [&] { norms(TL{w.to(at::kDouble)}, numels, segs, seg_ptr); });
  CHECK_THROWS("layout.rebuild()", [&] { norms(TL{w}, IL{10}, segs, seg_ptr); });
  CHECK_THROWS("elements but the layout was built for", [&] { norms(TL{at::randn({5, 3})}, numels, segs, seg_ptr); });
  CHECK_THROWS("rebuild the ChannelLayout", [&] { norms(TL{w, w}, numels, segs, seg_ptr); });
  CHECK_THROWS("[nseg, 5]", [&] { norms(TL{w}, numels, segs.narrow(1, 0, 4).contiguous(), seg_ptr); });
  CHECK_THROWS("[nseg, 5]", [&] { norms(TL{w}, numels, segs.to(at::kInt), seg_ptr); });
  CHECK_THROWS("seg_ptr must be", [&] { norms(TL{w}, numels, segs, seg_ptr.to(at::kInt)); });
  CHECK_THROWS("seg_ptr must be", [&] { norms(TL{w}, numels, segs, seg_ptr.view({5})); });
  CHECK_THROWS("not contiguous", [&] { norms(TL{at::randn({3, 4}).t()}, numels, segs, seg_ptr); });

  auto lasso = [&](TL ws, TL gs, at::Tensor mask, at::Tensor reg, double eps) {
    call("group_lasso_grad_", {ws, gs, numels, segs, seg_ptr, mask, reg, eps}, runs);
  };
  const at::Tensor mask = at::ones({4}, at::kBool), reg = at::scalar_tensor(0.1, at::kFloat);
  lasso(TL{w}, TL{g}, mask, reg, 1e-8);
  CHECK_THROWS("same shape, dtype and device", [&] { lasso(TL{w}, TL{at::randn({3, 4})}, mask, reg, 1e-8); });
  CHECK_THROWS("same shape, dtype and device", [&] { lasso(TL{w}, TL{g.to(at::kHalf)}, mask, reg, 1e-8); });
  CHECK_THROWS("grads for", [&] { lasso(TL{w}, TL{}, mask, reg, 1e-8); });
  CHECK_THROWS("one entry per channel", [&] { lasso(TL{w}, TL{g}, at::ones({3}, at::kBool), reg, 1e-8); });
  CHECK_THROWS("bool vector", [&] { lasso(TL{w}, TL{g}, at::ones({4}, at::kInt), reg, 1e-8); });
  CHECK_THROWS("reg must be a float32", [&] { lasso(TL{w}, TL{g}, mask, at::scalar_tensor(0.1, at::kDouble), 1e-8); });
  CHECK_THROWS("reg must be a float32", [&] { lasso(TL{w}, TL{g}, mask, at::ones({2}), 1e-8); });
  CHECK_THROWS("eps must be positive", [&] { lasso(TL{w}, TL{g}, mask, reg, 0.0); });

  auto scale = [&](TL ws, at::Tensor mask, at::Tensor f) { call("scale_channels_", {ws, numels, segs, seg_ptr, mask, f}, runs); };
  scale(TL{w.clone()}, mask, at::scalar_tensor(0.5, at::kFloat));
  CHECK_THROWS("factor must be a float32", [&] { scale(TL{w}, mask, at::ones({2})); });
  CHECK_THROWS("one entry per channel", [&] { scale(TL{w}, at::ones({5}, at::kBool), at::scalar_tensor(0.5, at::kFloat)); });
  CHECK_THROWS("only float32", [&] { scale(TL{w.to(at::kLong)}, mask, at::scalar_tensor(0.5, at::kFloat)); });

  auto compact = [&](at::Tensor t, int64_t dim, at::Tensor keep) { call("compact_", {t, dim, keep}); };
  const at::Tensor keep = at::tensor(std::vector<int64_t>{0, 2}, at::kLong);
  CHECK_THROWS("out of range", [&] { compact(at::randn({4, 3}), 2, keep); });
  CHECK_THROWS("out of range", [&] { compact(at::randn({4, 3}), -3, keep); });
  CHECK_THROWS("int64 vector", [&] { compact(at::randn({4, 3}), 0, keep.to(at::kInt)); });
  CHECK_THROWS("indices but dim", [&] { compact(at::randn({4, 3}), 1, at::tensor(std::vector<int64_t>{0, 1, 2, 2}, at::kLong)); });
  CHECK_THROWS("must be contiguous", [&] { compact(at::randn({3, 4}).t(), 0, keep); });
  CHECK_THROWS("at least one dimension", [&] { compact(at::scalar_tensor(1.0), 0, keep); });
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
    norms(TL{w}, IL{10}, segs, seg_ptr);
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
  at::manual_seed(1234);
  std::mt19937 rng(1234);
  const std::vector<std::pair<std::string, std::function<void()>>> tests = {
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
