// The channel layout table and its index math, shared by the CPU and the CUDA kernels.
//
// Everything in this header is plain arithmetic on int64 values: `ONEPRUNE_HD` makes each
// function `__host__ __device__` under nvcc and an ordinary inline function elsewhere, so the
// CPU kernels, the CUDA kernels and the C++ tests (csrc/tests) run exactly the same code.
//
// The table (one int64 tensor per model, built by oneprune_ext/kernels/layout.py) has five sections
// after a header of kHeaderLen values:
//
//   tensors [ntensors, kTensorCols]  numel, ndim, sizes[8], strides[8] the layout was built for
//   tiles   [ntiles, kTileCols]      regions of one tensor, see Tile
//   chunks  [nchunks, kChunkCols]    fixed-size pieces of a tile, see Chunk
//   cptr    [nchan + 1]              channel c's entries are cptr[c] .. cptr[c+1]-1
//   entries [nentries, 2]            (partial slot, elements of the channel in that slice)
//   nslices [nchan]                  slices per channel (M in the saliency's mean)
//
// A tile is a 2-D region of one tensor *in its memory order* (contiguous, channels_last, or
// any dense permutation): `lines` lines of `width` contiguous elements, line l starting at
// element base + l * stride. Every element has up to two channels:
//   line channel      lchan0 + (l / ldiv) % lmod   (the outer channel dim, e.g. a conv's rows)
//   position channel  pchan0 + (j / pdiv) % pmod   (the inner one, e.g. its columns; j < width)
// A channel start of -1 means "no channel on that side". `div` folds the inner block size
// (a flatten's H*W, a conv's kh*kw) and `mod` folds repeated slices (grouped convolutions).
//
// A chunk covers lines [l0, l0 + nl) and positions [j0, j0 + nj) of one tile. Its partial
// sums go to slots slot0.. : first one slot per line group (l / ldiv) it touches, then one per
// position group (j / pdiv). Chunks never overlap, so the writing kernels update all chunks in
// parallel, each element once; the per-channel results are combined from the slots in the
// fixed order of the entries, so they do not depend on thread counts or scheduling.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ONEPRUNE_HD __host__ __device__ __forceinline__
#else
#define ONEPRUNE_HD inline
#endif

namespace oneprune {
namespace layout {

constexpr int64_t kMagic = 0x4F4E4550;  // "PENO"
constexpr int64_t kFormatVersion = 1;
constexpr int64_t kHeaderLen = 8;  // magic, version, ntensors, nchan, ntiles, nchunks, nslots, nentries
constexpr int64_t kMaxDims = 8;
constexpr int64_t kTensorCols = 2 + 2 * kMaxDims;
constexpr int64_t kTileCols = 11;
constexpr int64_t kChunkCols = 6;
constexpr int64_t kEntryCols = 2;
// Chunk size limits (checked on the host; the CUDA kernels size their shared memory by them).
constexpr int64_t kMaxChunkWidth = 1024;
constexpr int64_t kMaxChunkLines = 1024;
constexpr int64_t kMaxChunkElems = 65536;

struct Tile {
  int64_t tensor, base, lines, width, stride;
  int64_t lchan0, ldiv, lmod;
  int64_t pchan0, pdiv, pmod;
};

struct Chunk {
  int64_t tile, l0, nl, j0, nj, slot0;
};

// Pointers to the sections of a table and its counts.
struct Table {
  int64_t ntensors, nchan, ntiles, nchunks, nslots, nentries;
  const int64_t* tensors;
  const int64_t* tiles;
  const int64_t* chunks;
  const int64_t* cptr;
  const int64_t* entries;
  const int64_t* nslices;
};

// Length in int64 values of a table with these counts.
ONEPRUNE_HD int64_t table_length(int64_t ntensors, int64_t nchan, int64_t ntiles, int64_t nchunks,
                                 int64_t nentries) {
  return kHeaderLen + ntensors * kTensorCols + ntiles * kTileCols + nchunks * kChunkCols + (nchan + 1) +
         nentries * kEntryCols + nchan;
}

// The sections of a table whose header was validated (see check_table in oneprune.h).
ONEPRUNE_HD Table table_view(const int64_t* t) {
  Table v;
  v.ntensors = t[2];
  v.nchan = t[3];
  v.ntiles = t[4];
  v.nchunks = t[5];
  v.nslots = t[6];
  v.nentries = t[7];
  v.tensors = t + kHeaderLen;
  v.tiles = v.tensors + v.ntensors * kTensorCols;
  v.chunks = v.tiles + v.ntiles * kTileCols;
  v.cptr = v.chunks + v.nchunks * kChunkCols;
  v.entries = v.cptr + (v.nchan + 1);
  v.nslices = v.entries + v.nentries * kEntryCols;
  return v;
}

ONEPRUNE_HD Tile read_tile(const Table& t, int64_t i) {
  const int64_t* r = t.tiles + i * kTileCols;
  return Tile{r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]};
}

ONEPRUNE_HD Chunk read_chunk(const Table& t, int64_t i) {
  const int64_t* r = t.chunks + i * kChunkCols;
  return Chunk{r[0], r[1], r[2], r[3], r[4], r[5]};
}

// Element index (in the tensor's memory order) of position j of line l.
ONEPRUNE_HD int64_t element_index(const Tile& t, int64_t l, int64_t j) { return t.base + l * t.stride + j; }

// Group of line l / position j (the slot key), and the channel of a group (-1: none).
ONEPRUNE_HD int64_t line_group(const Tile& t, int64_t l) { return l / t.ldiv; }
ONEPRUNE_HD int64_t pos_group(const Tile& t, int64_t j) { return j / t.pdiv; }
ONEPRUNE_HD int64_t line_group_channel(const Tile& t, int64_t g) { return t.lchan0 < 0 ? -1 : t.lchan0 + g % t.lmod; }
ONEPRUNE_HD int64_t pos_group_channel(const Tile& t, int64_t g) { return t.pchan0 < 0 ? -1 : t.pchan0 + g % t.pmod; }
ONEPRUNE_HD int64_t line_channel(const Tile& t, int64_t l) { return line_group_channel(t, line_group(t, l)); }
ONEPRUNE_HD int64_t pos_channel(const Tile& t, int64_t j) { return pos_group_channel(t, pos_group(t, j)); }

// Element e (0 <= e < lines * width, row-major over the tile) -> its index in the tensor and
// its two channels. The kernels walk lines and positions directly; this is the definition
// the tests check them against.
struct ElementChannels {
  int64_t index, line_chan, pos_chan;
};
ONEPRUNE_HD ElementChannels element_channels(const Tile& t, int64_t e) {
  const int64_t l = e / t.width, j = e - l * t.width;
  return ElementChannels{element_index(t, l, j), line_channel(t, l), pos_channel(t, j)};
}

// The slots of a chunk: line groups gl0 .. gl0+nls-1 at slot0 .., then position groups
// gp0 .. gp0+nps-1 at slot0 + nls ...
struct ChunkSlots {
  int64_t gl0, nls, gp0, nps;
};
ONEPRUNE_HD ChunkSlots chunk_slots(const Tile& t, const Chunk& c) {
  ChunkSlots s{0, 0, 0, 0};
  if (t.lchan0 >= 0 && c.nl > 0) {
    s.gl0 = line_group(t, c.l0);
    s.nls = line_group(t, c.l0 + c.nl - 1) - s.gl0 + 1;
  }
  if (t.pchan0 >= 0 && c.nj > 0) {
    s.gp0 = pos_group(t, c.j0);
    s.nps = pos_group(t, c.j0 + c.nj - 1) - s.gp0 + 1;
  }
  return s;
}

// The lines of chunk c in line group g: [first, last).
ONEPRUNE_HD void group_lines(const Tile& t, const Chunk& c, int64_t g, int64_t* first, int64_t* last) {
  const int64_t a = g * t.ldiv, b = a + t.ldiv;
  *first = a > c.l0 ? a : c.l0;
  *last = b < c.l0 + c.nl ? b : c.l0 + c.nl;
}

// The positions of chunk c in position group g: [first, last).
ONEPRUNE_HD void group_positions(const Tile& t, const Chunk& c, int64_t g, int64_t* first, int64_t* last) {
  const int64_t a = g * t.pdiv, b = a + t.pdiv;
  *first = a > c.j0 ? a : c.j0;
  *last = b < c.j0 + c.nj ? b : c.j0 + c.nj;
}

// Calls f(group, channel) for groups g0 .. g0+n-1 of one side (chan0, mod) in order: one
// modulo for the whole range (the channel wraps by increment), not one per group.
template <typename F>
ONEPRUNE_HD void for_each_group(int64_t chan0, int64_t mod, int64_t g0, int64_t n, F&& f) {
  int64_t c = g0 % mod;
  for (int64_t g = g0; g < g0 + n; ++g) {
    f(g, chan0 + c);
    if (++c == mod) c = 0;
  }
}

// Whether any channel of groups g0 .. g0+n-1 of one side is set in `mask`.
ONEPRUNE_HD bool any_group_masked(int64_t chan0, int64_t mod, int64_t g0, int64_t n, const bool* mask) {
  int64_t c = g0 % mod;
  for (int64_t k = 0; k < n; ++k) {
    if (mask[chan0 + c]) return true;
    if (++c == mod) c = 0;
  }
  return false;
}

// Whether any channel of chunk c is set in `mask` (chunks without one are skipped by the
// masked kernels).
ONEPRUNE_HD bool chunk_has_masked(const Tile& t, const Chunk& c, const bool* mask) {
  const ChunkSlots s = chunk_slots(t, c);
  return (s.nls > 0 && any_group_masked(t.lchan0, t.lmod, s.gl0, s.nls, mask)) ||
         (s.nps > 0 && any_group_masked(t.pchan0, t.pmod, s.gp0, s.nps, mask));
}

// With prefix[i] = number of masked channels among 0 .. i-1: whether any channel of groups
// g0 .. g0+n-1 of one side (chan0, mod) is masked, in O(1) (the channels are one contiguous
// range, or two when the repeat wraps).
ONEPRUNE_HD bool any_masked_counted(const int32_t* prefix, int64_t chan0, int64_t mod, int64_t g0, int64_t n) {
  if (n <= 0) return false;
  if (n >= mod) return prefix[chan0 + mod] > prefix[chan0];
  const int64_t s = g0 % mod, e = s + n;
  if (e <= mod) return prefix[chan0 + e] > prefix[chan0 + s];
  return prefix[chan0 + mod] > prefix[chan0 + s] || prefix[chan0 + e - mod] > prefix[chan0];
}

ONEPRUNE_HD bool chunk_has_masked_counted(const Tile& t, const Chunk& c, const int32_t* prefix) {
  const ChunkSlots s = chunk_slots(t, c);
  return (s.nls > 0 && any_masked_counted(prefix, t.lchan0, t.lmod, s.gl0, s.nls)) ||
         (s.nps > 0 && any_masked_counted(prefix, t.pchan0, t.pmod, s.gp0, s.nps));
}

// Channel c's sum of squares and saliency from the partial sums, in entry order (fixed):
// sq = sum of its slots, saliency = (1/M) * sum_slots partial / sqrt(elements in the slice).
ONEPRUNE_HD void combine_channel(const Table& t, const float* partial, int64_t c, float* sq, float* sal) {
  float total = 0.f, weighted = 0.f;
  for (int64_t e = t.cptr[c]; e < t.cptr[c + 1]; ++e) {
    const float p = partial[t.entries[e * kEntryCols]];
    total += p;
    weighted += p / sqrtf(static_cast<float>(t.entries[e * kEntryCols + 1]));
  }
  const int64_t m = t.nslices[c];
  *sq = total;
  *sal = m > 0 ? weighted / static_cast<float>(m) : 0.f;
}

// Channel c's sum of squares only.
ONEPRUNE_HD float combine_sumsq(const Table& t, const float* partial, int64_t c) {
  float total = 0.f;
  for (int64_t e = t.cptr[c]; e < t.cptr[c + 1]; ++e) total += partial[t.entries[e * kEntryCols]];
  return total;
}


// ---------------------------------------------------------------------------------------
// How a CUDA block of `threads` threads walks a chunk (the arithmetic only; the loads,
// shuffles and shared memory are in csrc/cuda/chunk_walk.cuh). A chunk line of nj positions is
// cut into nvec vectors of `vec` elements (16 bytes); `group` consecutive lanes (a power of two
// <= 32, so that a group never spans two warps) cover `group` consecutive vectors of one line,
// `segs` groups cover a whole line, and the block covers `lpp` lines per pass. Each lane keeps
// the same vector position for the whole chunk, so per-position sums stay in registers.
struct Lanes {
  int64_t vec, nvec, group, segs, lpp;
};
struct LanePlace {
  int64_t lo;   // line offset within a pass (0 .. lpp-1)
  int64_t seg;  // which group of the line
  int64_t li;   // lane within the group
  int64_t vp;   // vector position in the line
  bool active;  // lo < lpp and vp < nvec
};
// Shared-memory floats the CUDA walk needs for per-line and per-position partial sums
// (enough for every chunk within the kMaxChunk* limits; checked by the C++ tests).
constexpr int64_t kShLineFloats = 1024;

ONEPRUNE_HD Lanes chunk_lanes(int64_t nj, int64_t vec, int64_t threads) {
  Lanes L;
  L.vec = vec;
  L.nvec = (nj + vec - 1) / vec;
  int64_t g = 1;
  while (g < 32 && g < L.nvec) g *= 2;
  L.group = g;
  L.segs = (L.nvec + g - 1) / g;
  L.lpp = (threads / g) / L.segs;
  if (L.lpp < 1) L.lpp = 1;  // (only for nvec > threads, which the chunk limits exclude)
  return L;
}

ONEPRUNE_HD LanePlace lane_place(const Lanes& L, int64_t tid) {
  LanePlace p;
  const int64_t grp = tid / L.group;
  p.li = tid - grp * L.group;
  p.lo = grp / L.segs;
  p.seg = grp - p.lo * L.segs;
  p.vp = p.seg * L.group + p.li;
  p.active = p.lo < L.lpp && p.vp < L.nvec;
  return p;
}

}  // namespace layout
}  // namespace oneprune
