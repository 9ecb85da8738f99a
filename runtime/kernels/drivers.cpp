// Drivers: ISA dispatch, threading, blocking, im2col of packed bits (the output transform is epilogue.inc).
#include "kernels.h"
#include "parallel.h"
#include "rowops.inc"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <stdexcept>

namespace bhv {
namespace {

constexpr int64_t kRowBlock = 64;     // rows of A per task, at most
constexpr int64_t kMinRowTasks = 4;   // row blocks per call, at least, where each keeps kMinBlockRows rows
constexpr int64_t kMinBlockRows = 16;
constexpr int64_t kPanelBlock = 16;   // weight panels (128 output columns) per task
constexpr int64_t kSubRows = 16;      // rows whose int32 popcounts (16 x 128 x 4 B = 8 KiB) are transformed at once
// The nibble-table path builds each activation row's tables once per task, so its tasks span more
// columns (up to 1024: the tables of a row are built once for every fc1 of the model) over fewer rows
// at a time: as many as keep the int32 popcounts within kNibbleSubBytes (4 to 16 rows, in L1).
// Measured on stage-1/2 fc1 (3136x64x512, 784x128x1024): 20-40 % faster than 128-column tasks.
constexpr int64_t kNibblePanelBlock = 128;
constexpr int64_t kNibbleSubBytes = 16 << 10;
constexpr int64_t kSerialWork = 1 << 16;  // below this many word-ops (a few microseconds) a call runs on
                                          // one thread: a parallel region costs more than it saves there.
                                          // Measured: 2 threads halve a 212x256x256 bgemm (45 -> 25 us).
constexpr int64_t kStreamBytes = int64_t(16) << 20;  // outputs at least this large are written with
                                                     // non-temporal stores (epilogue.inc): on a 32 MiB-L3
                                                     // Zen 4 core plain stores win below ~16 MiB
                                                     // (the data stays in cache), streaming wins above
                                                     // (24 -> 50-67 GB/s).

// Rows per row block of an M-row product: M split evenly into blocks of at most kRowBlock rows, at least
// kMinRowTasks blocks where each keeps kMinBlockRows rows, and a multiple of the thread count, so that every
// thread gets the same rows. Blocks of a fixed 64 rows left BHViT's maps at 224 unbalanced on 2 threads:
// stage 3's 196 tokens were 64 + 64 + 64 + 4 rows (one thread 128, the other 68), stage 2's 784 were 13
// blocks (7 against 6), stage 4's 49 one task; now 4 x 49, 14 x 56 and 4 x 13. The result does not depend
// on the blocks (each output is one integer dot and its own transform).
int64_t block_rows(int64_t M) {
  const int64_t threads = get_num_threads();
  int64_t blocks = std::max((M + kRowBlock - 1) / kRowBlock, std::min(kMinRowTasks, M / kMinBlockRows));
  blocks = std::min(M, (blocks + threads - 1) / threads * threads);
  return std::max<int64_t>(1, (M + blocks - 1) / blocks);
}

// The epilogue, streamed when its whole output (rows x cols floats) will not stay in cache.
Epilogue streamed_if_large(const Epilogue& e, int64_t rows, int64_t cols) {
  Epilogue out = e;
  out.stream = !e.accumulate && !e.bits && rows * cols * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  return out;
}

std::vector<const IsaKernels*> detect() {
  std::vector<const IsaKernels*> out;
  for (auto f : {isa_avx512vpopcnt, isa_avx512bw, isa_avx2, isa_neon, isa_wasm_simd128, isa_popcnt,
                 isa_generic})
    if (const IsaKernels* k = f()) out.push_back(k);
  return out;
}

const std::vector<const IsaKernels*>& isas() {
  static const std::vector<const IsaKernels*> v = detect();
  return v;
}

// The ISA in use: process-wide, read by every call (set_isa may run while other threads compute).
std::atomic<const IsaKernels*>& active_slot() {
  static std::atomic<const IsaKernels*> k{isas().front()};
  return k;
}

const IsaKernels* active() { return active_slot().load(std::memory_order_relaxed); }

// Runs f(task) for task in [0, n); in parallel when there is enough work (parallel.h).
template <class F>
void parallel_for(int64_t n, int64_t work, F&& f) {
  parallel_tasks(n, work, kSerialWork, f);
}

int32_t* scratch_i32(size_t n) {
  thread_local std::vector<int32_t> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

uint64_t* scratch_u64(size_t n) {
  thread_local std::vector<uint64_t> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

int32_t* scratch_dots(size_t n) {  // a second int32 scratch, live beside scratch_i32's
  thread_local std::vector<int32_t> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ORs nbits bits of src starting at bit sbit into dst starting at bit dbit (nbits <= 64).
inline void or_bits(uint64_t* dst, int64_t dbit, const uint64_t* src, int64_t sbit, int64_t nbits) {
  const int64_t sw = sbit >> 6, so = sbit & 63, dw = dbit >> 6, dof = dbit & 63;
  uint64_t v = src[sw] >> so;
  if (so && so + nbits > 64) v |= src[sw + 1] << (64 - so);
  if (nbits < 64) v &= (uint64_t(1) << nbits) - 1;
  dst[dw] |= v << dof;
  if (dof && dof + nbits > 64) dst[dw + 1] |= v >> (64 - dof);
}

// Packed im2col of rows [m0, m0 + mlen) of a conv (bconv): col[g][i] holds the bits (tap, channel of
// group g) of output pixel m0 + i (col zeroed by the caller; taps that see the padding stay 0). CG is
// the group width when it divides 64 (then no field straddles a word, in the pixel or in col, and the
// shifts are constants), or 0 for any width; TT the tap count when constant (then an interior pixel's
// words are assembled in registers from unrolled taps). The geometry is copied into locals first: col is
// written through uint64_t, which may alias the int64_t fields of ConvGeom, and would otherwise make the
// compiler reload them after every store. Measured with the border table below, AVX2 Xeon, 1 thread:
// the stage-1 branch conv (56x56, 64 channels in 4 groups, 3x3) 425 -> 290 us, stage 2's 213 -> 160 us.
template <int CG, int TT>
void im2col_bits(const uint64_t* __restrict xp, const ConvGeom& geom, int64_t m0, int64_t mlen, int64_t KWc,
                 uint64_t* __restrict col) {
  const int64_t H = geom.H, W = geom.W, CW = geom.CW, OH = geom.OH, OW = geom.OW, KWd = geom.KWd;
  const int64_t KH = geom.KH, stride = geom.stride, pad = geom.pad, dil = geom.dil, groups = geom.groups;
  const int64_t Cg = CG ? CG : geom.C / groups, gstride = kRowBlock * KWc;
  const uint64_t field_mask = Cg >= 64 ? ~uint64_t(0) : (uint64_t(1) << Cg) - 1;
  int64_t offs[16];  // word offset of each tap's pixel from the top-left tap's
  for (int64_t t = 0; t < KH * KWd; ++t) offs[t] = ((t / KWd) * dil * W + (t % KWd) * dil) * CW;
  // output pixel (b, oh, ow) of row m0 + i, advanced by counters: three 64-bit divisions per pixel
  // would cost more than its taps
  int64_t b = m0 / (OH * OW), oh = (m0 / OW) % OH, ow = m0 % OW;
  for (int64_t i = 0; i < mlen; ++i, ++ow) {
    if (ow == OW) {
      ow = 0;
      if (++oh == OH) oh = 0, ++b;
    }
    uint64_t* ci = col + i * KWc;
    const int64_t ih0 = oh * stride - pad, iw0 = ow * stride - pad;
    if constexpr (CG != 0 && TT != 0) {
      if (ih0 >= 0 && iw0 >= 0 && ih0 + (KH - 1) * dil < H && iw0 + (KWd - 1) * dil < W) {
        // interior pixel, every tap valid, constant field positions: each word of col assembled in a
        // register from unrolled taps and stored once
        constexpr int64_t kWords = (TT * CG + 63) / 64;
        const uint64_t* base = xp + ((b * H + ih0) * W + iw0) * CW;
        for (int64_t g = 0; g < groups; ++g) {
          const uint64_t* bg = base + ((g * CG) >> 6);
          const int gs = static_cast<int>((g * CG) & 63);
          uint64_t words[kWords] = {};
          BHV_UNROLL
          for (int t = 0; t < TT; ++t) words[(t * CG) >> 6] |= ((bg[offs[t]] >> gs) & field_mask) << ((t * CG) & 63);
          BHV_UNROLL
          for (int64_t k = 0; k < kWords; ++k) ci[g * gstride + k] = words[k];
        }
        continue;
      }
    }
    for (int64_t ky = 0; ky < KH; ++ky) {
      const int64_t ih = ih0 + ky * dil;
      if (ih < 0 || ih >= H) continue;
      const uint64_t* row = xp + (b * H + ih) * W * CW;
      for (int64_t kx = 0; kx < KWd; ++kx) {
        const int64_t iw = iw0 + kx * dil;
        if (iw < 0 || iw >= W) continue;
        const int64_t tap = ky * KWd + kx;
        const uint64_t* px = row + iw * CW;
        if (CG) {
          const int64_t tw = (tap * Cg) >> 6, ts = (tap * Cg) & 63;
          for (int64_t g = 0; g < groups; ++g)
            ci[g * gstride + tw] |= ((px[(g * Cg) >> 6] >> ((g * Cg) & 63)) & field_mask) << ts;
        } else {
          for (int64_t g = 0; g < groups; ++g)
            for (int64_t o = 0; o < Cg; o += 64)
              or_bits(ci + g * gstride, tap * Cg + o, px, g * Cg + o, std::min<int64_t>(64, Cg - o));
        }
      }
    }
  }
}

using Im2colFn = void (*)(const uint64_t*, const ConvGeom&, int64_t, int64_t, int64_t, uint64_t*);

template <int CG>
Im2colFn im2col_for_taps(int64_t T) {
  switch (T) {
    case 4: return im2col_bits<CG, 4>;  // 2x2 (downsampling)
    case 9: return im2col_bits<CG, 9>;  // 3x3 (the mixer's branches)
    default: return im2col_bits<CG, 0>;
  }
}

// The im2col for a group width Cg and T taps: constant shifts where Cg divides 64, unrolled taps for the
// kernel sizes BHViT uses; any other conv takes the general loops.
Im2colFn im2col_for(int64_t Cg, int64_t T) {
  switch (Cg) {
    case 8: return im2col_for_taps<8>(T);
    case 16: return im2col_for_taps<16>(T);
    case 32: return im2col_for_taps<32>(T);
    case 64: return im2col_for_taps<64>(T);
    default: return im2col_bits<0, 0>;
  }
}

// Which taps of a kernel row (or column) see a real pixel at each output row (column): validity bits over
// k positions, distinct masks numbered in order of appearance; cls[o] is output o's mask number.
struct TapClasses {
  std::vector<uint16_t> masks;
  std::vector<int32_t> cls;
};

TapClasses tap_classes(int64_t n_out, int64_t n_in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  TapClasses c;
  c.cls.resize(static_cast<size_t>(n_out));
  for (int64_t o = 0; o < n_out; ++o) {
    uint16_t m = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = o * stride - pad + j * dil;
      if (p >= 0 && p < n_in) m = static_cast<uint16_t>(m | (1u << j));
    }
    size_t idx = 0;
    while (idx < c.masks.size() && c.masks[idx] != m) ++idx;
    if (idx == c.masks.size()) c.masks.push_back(m);
    c.cls[static_cast<size_t>(o)] = static_cast<int32_t>(idx);
  }
  return c;
}

// Border patterns of a conv: pattern (r, c) = row mask r x column mask c. For each, the count of valid taps
// and sum_{invalid taps t} wpop[o, t] per output channel o: invalid taps read zero bits in col, so the
// popcount counted popcount(w[o, t]) for each, which is not part of the product (see bconv).
struct BorderTable {
  TapClasses rows, cols;
  std::vector<int32_t> valid_taps;  // (patterns,)
  std::vector<int32_t> half_corr;   // (patterns, Cout)
};

BorderTable border_table(const ConvGeom& c, const int32_t* wpop) {
  BorderTable t;
  t.rows = tap_classes(c.OH, c.H, c.KH, c.stride, c.pad, c.dil);
  t.cols = tap_classes(c.OW, c.W, c.KWd, c.stride, c.pad, c.dil);
  const int64_t nr = static_cast<int64_t>(t.rows.masks.size()), nc = static_cast<int64_t>(t.cols.masks.size());
  const int64_t T = c.KH * c.KWd;
  t.valid_taps.assign(static_cast<size_t>(nr * nc), 0);
  t.half_corr.assign(static_cast<size_t>(nr * nc * c.Cout), 0);
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t q = 0; q < nc; ++q) {
      const int64_t p = r * nc + q;
      int32_t* cv = t.half_corr.data() + p * c.Cout;
      for (int64_t tap = 0; tap < T; ++tap) {
        const bool valid = (t.rows.masks[r] >> (tap / c.KWd) & 1) && (t.cols.masks[q] >> (tap % c.KWd) & 1);
        if (valid) {
          ++t.valid_taps[static_cast<size_t>(p)];
          continue;
        }
        for (int64_t o = 0; o < c.Cout; ++o) cv[o] += wpop[o * T + tap];
      }
    }
  return t;
}

}  // namespace

// ---- configuration ----------------------------------------------------------------------------
std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const IsaKernels* k : isas()) out.emplace_back(k->name);
  return out;
}

std::string current_isa() { return active()->name; }

void set_isa(const std::string& name) {
  for (const IsaKernels* k : isas())
    if (name == k->name) {
      active_slot().store(k, std::memory_order_relaxed);
      return;
    }
  throw std::invalid_argument("ISA '" + name + "' is not available on this CPU/build");
}

const IsaKernels& active_kernels() { return *active(); }


// ---- packing ----------------------------------------------------------------------------------
void pack_rows(const float* x, int64_t ldx, int64_t M, int64_t K, const float* bias, uint64_t* out) {
  const int64_t KW = words_for(K), nb = (M + 255) / 256;
  parallel_for(nb, M * K / 8, [&](int64_t b) {
    const int64_t m0 = b * 256, m1 = std::min(M, m0 + 256);
    active()->pack_rows(x + m0 * ldx, ldx, m1 - m0, K, bias, out + m0 * KW);
  });
}

void to_panels(const uint64_t* rows, int64_t G, int64_t N, int64_t KW, uint64_t* panels) {
  const int64_t NP = panels_for(N);
  for (int64_t g = 0; g < G; ++g) {
    uint64_t* pg = panels + g * NP * KW * kPanel;
    std::memset(pg, 0, sizeof(uint64_t) * NP * KW * kPanel);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < KW; ++k) pg[((n / kPanel) * KW + k) * kPanel + n % kPanel] = rows[(g * N + n) * KW + k];
  }
}


bool nibbles_pay(int64_t N, int64_t KW) { return KW <= kNibbleMaxWords && N >= 2 * kQuad; }

void to_nibbles(const uint64_t* panels, int64_t NP, int64_t KW, uint8_t* out) {
  const int64_t NQ = quads_for(NP * kPanel);
  for (int64_t q = 0; q < NQ; ++q)
    for (int64_t k = 0; k < KW; ++k) {
      uint8_t* o = out + (q * KW + k) * 16 * kQuad;  // [c][j]
      for (int64_t j = 0; j < kQuad; ++j) {
        const int64_t row = q * kQuad + j, p = row / kPanel;
        const uint64_t w = p < NP ? panels[(p * KW + k) * kPanel + row % kPanel] : 0;
        for (int c = 0; c < 16; ++c) o[c * kQuad + j] = static_cast<uint8_t>((w >> (4 * c)) & 15);
      }
    }
}


// ---- binary products --------------------------------------------------------------------------

void bgemm(const uint64_t* A, int64_t M, const uint64_t* Bp, int64_t b_gstride, int64_t N, int64_t KW,
           int64_t K, int64_t G, const Epilogue& e_in, const uint8_t* nib) {
  const Epilogue e = streamed_if_large(e_in, G * M, N);
  const int64_t NP = panels_for(N);
  constexpr int64_t kPerQuad = kQuad / kPanel;  // panels per quad
  static_assert(kPanelBlock % kPerQuad == 0 && kNibblePanelBlock % kPerQuad == 0,
                "panel blocks must hold whole quads");
  const bool tables = nib && b_gstride == 0 && nibbles_pay(N, KW) && KW <= active()->nibble_max_words;
  const int64_t pblock = tables ? kNibblePanelBlock : kPanelBlock;
  const int64_t rows = block_rows(M), nrb = (M + rows - 1) / rows, npb = (NP + pblock - 1) / pblock;
  parallel_for(G * nrb * npb, G * M * NP * kPanel * KW, [&](int64_t t) {
    const int64_t g = t / (nrb * npb), rb = (t / npb) % nrb, pb = t % npb;
    const int64_t m0 = rb * rows, mlen = std::min(rows, M - m0);
    const int64_t p0 = pb * pblock, p1 = std::min(NP, p0 + pblock);
    const int64_t n0 = p0 * kPanel, n1 = std::min(N, p1 * kPanel);
    // popcount rows of the task's columns; the tables write whole quads
    const int64_t ldp = (tables ? quads_for(n1 - n0) * kQuad : (p1 - p0) * kPanel);
    const int64_t sub = tables ? std::clamp<int64_t>(kNibbleSubBytes / (4 * ldp) / 4 * 4, 4, kSubRows) : kSubRows;
    int32_t* P = scratch_i32(sub * ldp);
    const IsaKernels* isa = active();
    for (int64_t s0 = 0; s0 < mlen; s0 += sub) {  // popcounts of a few rows, transformed while in L1
      const int64_t slen = std::min(sub, mlen - s0);
      const uint64_t* As = A + (g * M + m0 + s0) * KW;
      if (tables)  // quads of 4 panels; a partial last quad writes zero-weight columns past n1, inside ldp
        isa->nibble_block(As, KW, slen, nib, p0 / kPerQuad, (p1 + kPerQuad - 1) / kPerQuad, KW, P, ldp);
      else
        isa->popc_block(As, KW, slen, Bp + g * b_gstride, p0, p1, KW, false, P, ldp);
      isa->apply_rows(e, g, m0 + s0, slen, P, ldp, static_cast<int32_t>(K), n0, n1);
    }
  });
}

void bconv(const uint64_t* xp, const ConvGeom& c, const uint64_t* Bp, const int32_t* wpop, const Epilogue& e_in) {
  const Epilogue e = streamed_if_large(e_in, c.B * c.OH * c.OW, c.Cout);
  const int64_t Cg = c.C / c.groups, Ng = c.Cout / c.groups, T = c.KH * c.KWd;
  const int64_t KWc = words_for(T * Cg), NPg = panels_for(Ng), ldg = NPg * kPanel, ldp = c.groups * ldg;
  const int64_t M = c.B * c.OH * c.OW, rows = block_rows(M), nrb = (M + rows - 1) / rows;
  const Im2colFn im2col = im2col_for(Cg, T);
  const BorderTable border = border_table(c, wpop);  // once per call: a few patterns, shared by all tasks
  const int64_t ncls = static_cast<int64_t>(border.cols.masks.size());
  parallel_for(nrb, M * c.Cout * KWc, [&](int64_t rb) {
    const int64_t m0 = rb * rows, mlen = std::min(rows, M - m0);
    // im2col of packed bits, per group: col[g][i] = taps of row i, bits (tap, channel of group g)
    uint64_t* col = scratch_u64(c.groups * kRowBlock * KWc);
    std::memset(col, 0, sizeof(uint64_t) * c.groups * kRowBlock * KWc);
    im2col(xp, c, m0, mlen, KWc, col);
    int32_t* P = scratch_i32(kRowBlock * ldp);
    for (int64_t g = 0; g < c.groups; ++g)
      active()->popc_block(col + g * kRowBlock * KWc, KWc, mlen, Bp + g * NPg * KWc * kPanel, 0, NPg, KWc, false,
                           P + g * ldg, ldp);
    // dot over the valid taps V only: Cg |V| - 2 (P - sum_{t not in V} wpop[o, t]) (border_table). Runs of
    // rows with one border pattern go to the transform as raw popcounts with kdot = Cg |V|, a border
    // row's P first lowered by its halved correction; where the groups' panels leave gaps between their
    // columns (Ng not a multiple of 8), the dots are compacted into (mlen, Cout) first.
    const bool compact = ldg != Ng;
    int32_t* dots = compact ? scratch_dots(kRowBlock * c.Cout) : P;
    const int64_t ldd = compact ? c.Cout : ldp;
    int64_t oh = (m0 / c.OW) % c.OH, ow = m0 % c.OW;
    int64_t run0 = 0, run_p = -1;
    for (int64_t i = 0; i <= mlen; ++i, ++ow) {
      if (ow == c.OW) {
        ow = 0;
        if (++oh == c.OH) oh = 0;
      }
      const int64_t p = i == mlen ? -1 : border.rows.cls[static_cast<size_t>(oh)] * ncls +
                                             border.cols.cls[static_cast<size_t>(ow)];
      if (p != run_p) {  // flush the run [run0, i) of pattern run_p
        if (run_p >= 0) {
          const int32_t kdot = static_cast<int32_t>(Cg * border.valid_taps[static_cast<size_t>(run_p)]);
          active()->apply_rows(e, 0, m0 + run0, i - run0, dots + run0 * ldd, ldd, kdot, 0, c.Cout);
        }
        run0 = i, run_p = p;
      }
      if (i == mlen) break;
      const int32_t* half = border.half_corr.data() + p * c.Cout;
      const bool interior = border.valid_taps[static_cast<size_t>(p)] == T;
      if (!compact && interior) continue;
      int32_t* di = dots + i * ldd;
      for (int64_t g = 0; g < c.groups; ++g) {
        const int32_t* pg = P + i * ldp + g * ldg;
        int32_t* dg = di + g * Ng;
        const int32_t* hg = half + g * Ng;
        for (int64_t j = 0; j < Ng; ++j) dg[j] = pg[j] - hg[j];
      }
    }
  });
}

}  // namespace bhv
