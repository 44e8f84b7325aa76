// The Gated PixelCNN cached sampler's inner steps on the CPU, float32, as XLA FFI handlers (jaxconv/sampling.py,
// registered by cpu_gated_sampler.py): one position of the horizontal stack and output head, and below,
// one row of a vertical layer.
//
// Why by hand: per position the stack is a chain of small dots ([B, F] x [F, (r+1)*2F] and [B, F] x [F, F]
// per layer), gates and slot updates, run once per pixel in a loop. XLA:CPU runs each of those as its own
// op, and the ops' dispatch, not their FLOPs, took most of a position's time (Gated PixelCNN MNIST, batch 64:
// 27% of the measured matmul peak for the whole sampler). Here one call does a position's whole stack;
// its rows (images) are independent, so each of XLA's intra-op threads takes a fixed run of them.
//
// Per image row b, with hs = the first horizontal layer's output at column j, for each layer l (dilation d):
//   z = hs x h[l] ([(r+1) blocks of 2F]: block s is kernel tap r - s);
//   pending[j + d*s, l, b] += block s for s = 1..r (the taps this position adds to the columns ahead);
//   out = gate(pending[j, l, b] + block 0) x res_w[l] + res_b[l]; hs += out; skip += out;
// then raw = relu(relu(skip) x w1 + b1) x w2 + b2. ``pending`` starts each row as each layer's row bias
// (sampling.py); the handler that writes it updates it in place (aliased to its input).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jaxconv::ParallelFor;

namespace {

#if defined(__AVX512F__)
constexpr int kV = 16;
#else
constexpr int kV = 8;
#endif
// A tile of kMR rows x kNV vectors of kV columns: kMR * kNV accumulators, kNV loads of the weights and kMR
// broadcasts per step of the inner dimension; 6 x 2 keeps 12 accumulators, 2 weight vectors and a broadcast
// in AVX2's 16 registers.
constexpr int kMR = 6;
constexpr int kNV = 2;

typedef float Vec __attribute__((vector_size(kV * sizeof(float)), aligned(4)));
typedef int32_t IVec __attribute__((vector_size(kV * sizeof(int32_t)), aligned(4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
inline Vec Splat(float a) { return Vec{} + a; }
template <typename To, typename From>
inline To Bits(From v) {
  To out;
  __builtin_memcpy(&out, &v, sizeof(out));
  return out;
}

// max(c, x) and min(c, x), NaN where x is NaN: one instruction where the ISA has it (the vector
// extension's x < c ? c : x is a compare and a blend).
inline Vec Max(Vec c, Vec x) {
#if defined(__AVX512F__)
  return _mm512_max_ps(c, x);
#elif defined(__AVX__)
  return _mm256_max_ps(c, x);
#else
  return x < c ? c : x;
#endif
}
inline Vec Min(Vec c, Vec x) {
#if defined(__AVX512F__)
  return _mm512_min_ps(c, x);
#elif defined(__AVX__)
  return _mm256_min_ps(c, x);
#else
  return x > c ? c : x;
#endif
}

// out[m, n0 .. n0 + NV*kV) = x[m, :k] . w[:k, n0 ..] for m < MR.
template <int MR, int NV>
inline void Tile(const float* x, int64_t ldx, const float* w, int64_t ldw, float* out, int64_t ldo, int64_t k) {
  Vec acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = Vec{};
  for (int64_t t = 0; t < k; ++t) {
    Vec wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = Load(w + t * ldw + v * kV);
    for (int m = 0; m < MR; ++m) {
      const float xv = x[m * ldx + t];
      for (int v = 0; v < NV; ++v) acc[m][v] += xv * wv[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) Store(out + m * ldo + v * kV, acc[m][v]);
}

// A thread's scratch buffer ``which``, at least ``size`` floats, kept from call to call: the handlers
// allocate nothing per call. (Under the command line's malloc setting, one arena, jaxconv.hostmem, the
// vectors allocated in every call cost a visible share of a sample's CPU time in glibc's _int_malloc.)
enum ScratchUse { kPositionScratch, kVerticalScratch, kTailScratch, kScratchUses };
float* Scratch(ScratchUse which, int64_t size) {
  thread_local std::vector<float> buffers[kScratchUses];
  std::vector<float>& buffer = buffers[which];
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Columns [0, n - n % kV) of out = x . w, for MR rows.
template <int MR>
void Rows(const float* x, int64_t ldx, const float* w, int64_t n, float* out, int64_t ldo, int64_t k) {
  int64_t c = 0;
  for (; c + kNV * kV <= n; c += kNV * kV) Tile<MR, kNV>(x, ldx, w + c, n, out + c, ldo, k);
  for (; c + kV <= n; c += kV) Tile<MR, 1>(x, ldx, w + c, n, out + c, ldo, k);
}

void TailColumns(const float* x, int64_t ldx, const float* w, float* out, int64_t ldo, int64_t m, int64_t k,
                 int64_t n);

// out [m, n] = x [m, k] . w [k, n], row-major, x's rows ldx apart and out's ldo apart (w dense). Each
// element sums over k in order, whatever its tile: a row's result does not depend on which other rows
// share the call.
void Matmul(const float* x, int64_t ldx, const float* w, float* out, int64_t ldo, int64_t m, int64_t k,
            int64_t n) {
  int64_t r = 0;
  // Rows in tiles of 6 and 5 where they add up to m (a 4-row tile's rows cost a third more each): the most
  // 6s that leave a multiple of 5.
  int64_t sixes = m / kMR;
  while (sixes >= 0 && (m - kMR * sixes) % 5) --sixes;
  if (sixes >= 0) {
    for (; r < kMR * sixes; r += kMR) Rows<kMR>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
    for (; r < m; r += 5) Rows<5>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
  } else {
    // The last 8 rows as two tiles of 4, not 6 and 2: a 2-row tile's 4 accumulators cannot keep both FMA
    // units busy.
    for (; r + kMR <= m && m - r != 8; r += kMR) Rows<kMR>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
    for (; r + 4 <= m; r += 4) Rows<4>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
    for (; r + 2 <= m; r += 2) Rows<2>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
    for (; r < m; ++r) Rows<1>(x + r * ldx, ldx, w, n, out + r * ldo, ldo, k);
  }
  if (n % kV) TailColumns(x, ldx, w, out, ldo, m, k, n);
}

// The last n % kV columns (a bernoulli head's one logit): Matmul of x with a copy of their weights padded
// with zeros to a vector's width, not summed one element at a time (a chain of k dependent adds per
// element).
void TailColumns(const float* x, int64_t ldx, const float* w, float* out, int64_t ldo, int64_t m, int64_t k,
                 int64_t n) {
  const int64_t c0 = n - n % kV, tail = n - c0;
  float* padded = Scratch(kTailScratch, (k + m) * kV);
  float* full = padded + k * kV;  // [m, kV]
  for (int64_t t = 0; t < k; ++t) {
    std::copy(w + t * n + c0, w + t * n + n, padded + t * kV);
    std::fill(padded + t * kV + tail, padded + (t + 1) * kV, 0.f);
  }
  Matmul(x, ldx, padded, full, kV, m, k, kV);
  for (int64_t q = 0; q < m; ++q) std::copy(full + q * kV, full + q * kV + tail, out + q * ldo + c0);
}

// The same with dense x [m, k] and out [m, n].
void Matmul(const float* x, const float* w, float* out, int64_t m, int64_t k, int64_t n) {
  Matmul(x, k, w, out, n, m, k, n);
}

// exp(x) for x in about [-87, 88]: x = n ln2 + f with |f| <= ln2 / 2, exp(f) by its Taylor series to
// degree 7 (relative error < 1e-8 before rounding), times 2^n built in the exponent bits. Adding 1.5 * 2^23
// rounds x / ln2 to the integer n and leaves n in the sum's low bits: no conversions.
inline Vec Exp(Vec x) {
  x = Min(Splat(88.f), Max(Splat(-87.f), x));
  const Vec shifted = x * 1.44269504088896341f + 12582912.f;
  const Vec nr = shifted - 12582912.f;
  const Vec f = (x - nr * 0.693145751953125f) - nr * 1.428606820309417232e-6f;  // ln2 in two parts
  Vec p = Splat(1.f / 5040.f);
  p = p * f + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  // The sum's bits are those of 1.5 * 2^23 (none below bit 9) plus n: shifted left by 23, 2^n's exponent.
  return p * Bits<Vec>((Bits<IVec>(shifted) + 127) << 23);
}

// tanh(a) * sigmoid(b) = sign(a) (1 - e) / ((1 + e) (1 + exp(-b))) with e = exp(-2|a|) in (0, 1]: one
// division, no overflow; |a| and the sign by their bits.
inline Vec Gate(Vec a, Vec b) {
  const IVec bits = Bits<IVec>(a), sign = bits & static_cast<int32_t>(0x80000000u);
  const Vec e = Exp(Splat(-2.f) * Bits<Vec>(bits & 0x7fffffff));
  const Vec t = Bits<Vec>(Bits<IVec>(Splat(1.f) - e) | sign);
  return t / ((Splat(1.f) + e) * (Splat(1.f) + Exp(-b)));
}

// out[e] = tanh(u[e] + v[e]) * sigmoid(u[f + e] + v[f + e]) for e < f: a layer's gated output from its
// pre-gate sum in two parts (the slot so far and this step's part).
inline void GateRow(const float* u, const float* v, float* out, int64_t f) {
  int64_t e = 0;
  for (; e + kV <= f; e += kV) Store(out + e, Gate(Load(u + e) + Load(v + e), Load(u + f + e) + Load(v + f + e)));
  for (; e < f; ++e) out[e] = std::tanh(u[e] + v[e]) / (1.f + std::exp(-(u[f + e] + v[f + e])));
}

struct Shapes {
  int64_t batch, colours, layers, features, taps, hidden, outputs;
};

struct Weights {
  const float *h_first, *h_first_bias, *h, *res_w, *res_b, *w1, *b1, *w2, *b2;
  const int64_t* dilations;
};

// Rows [b0, b1) of position j: raw [B, P]; the later columns' slots of ``pending`` when ``write``.
void Position(const Shapes& s, const Weights& w, int64_t j, const float* x_row, float* pending, bool write,
              float* raw, int64_t b0, int64_t b1) {
  const int64_t m = b1 - b0, f = s.features, f2 = 2 * f, taps = s.taps;
  float* const hs = Scratch(kPositionScratch, m * (4 * f + taps * f2 + s.hidden));
  float *const skip = hs + m * f, *const gate = skip + m * f, *const out = gate + m * f, *const z = out + m * f,
               *const hidden = z + m * taps * f2;
  std::fill(skip, skip + m * f, 0.f);
  // The first horizontal layer: columns j - r .. j of x_row [W + r, B, C] (r zero columns on the left).
  for (int64_t b = 0; b < m; ++b)
    for (int64_t o = 0; o < f; ++o) hs[b * f + o] = w.h_first_bias[o];
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < s.colours; ++c) {
      const float* wrow = w.h_first + (t * s.colours + c) * f;
      for (int64_t b = 0; b < m; ++b) {
        const float xv = x_row[((j + t) * s.batch + b0 + b) * s.colours + c];
        for (int64_t o = 0; o < f; ++o) hs[b * f + o] += xv * wrow[o];
      }
    }
  const int64_t slot_col = s.layers * s.batch * f2;  // pending [W + reach, L, B, 2F]
  for (int64_t l = 0; l < s.layers; ++l) {
    Matmul(hs, w.h + l * f * taps * f2, z, m, f, taps * f2);
    const int64_t d = w.dilations[l];
    for (int64_t b = 0; b < m; ++b) {
      const float* zb = z + b * taps * f2;
      if (write)
        for (int64_t t = 1; t < taps; ++t) {
          float* slot = pending + (j + d * t) * slot_col + (l * s.batch + b0 + b) * f2;
          for (int64_t e = 0; e < f2; ++e) slot[e] += zb[t * f2 + e];
        }
      GateRow(pending + j * slot_col + (l * s.batch + b0 + b) * f2, zb, gate + b * f, f);
    }
    Matmul(gate, w.res_w + l * f * f, out, m, f, f);
    const float* bias = w.res_b + l * f;
    for (int64_t b = 0; b < m; ++b)
      for (int64_t o = 0; o < f; ++o) {
        const float v = out[b * f + o] + bias[o];
        hs[b * f + o] += v;
        skip[b * f + o] += v;
      }
  }
  for (int64_t e = 0; e < m * f; ++e) skip[e] = std::max(skip[e], 0.f);
  Matmul(skip, w.w1, hidden, m, f, s.hidden);
  for (int64_t b = 0; b < m; ++b)
    for (int64_t o = 0; o < s.hidden; ++o) hidden[b * s.hidden + o] = std::max(hidden[b * s.hidden + o] + w.b1[o], 0.f);
  float* raw_rows = raw + b0 * s.outputs;
  Matmul(hidden, w.w2, raw_rows, m, s.hidden, s.outputs);
  for (int64_t b = 0; b < m; ++b)
    for (int64_t o = 0; o < s.outputs; ++o) raw_rows[b * s.outputs + o] += w.b2[o];
}

// At least this many image rows per thread: below it, handing rows to another thread costs more than it saves.
constexpr int64_t kMinRows = 8;

ffi::Error Run(ffi::ThreadPool& pool, ffi::Buffer<ffi::S32> j_buf, ffi::Buffer<ffi::F32> x_row,
               ffi::Buffer<ffi::F32> pending_in, ffi::Buffer<ffi::F32> h_first, ffi::Buffer<ffi::F32> h_first_bias,
               ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> res_w, ffi::Buffer<ffi::F32> res_b,
               ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2,
               ffi::Buffer<ffi::F32> b2, ffi::Span<const int64_t> dilations, ffi::ResultBuffer<ffi::F32>& raw,
               float* pending, bool write) {
  const auto xd = x_row.dimensions(), pd = pending_in.dimensions(), hd = h.dimensions(), w2d = w2.dimensions(),
             w1d = w1.dimensions();
  if (xd.size() != 3 || pd.size() != 4 || hd.size() != 3 || w1d.size() != 2 || w2d.size() != 2 || pd[3] % 2 ||
      pd[3] == 0 || hd[2] % pd[3])
    return ffi::Error::InvalidArgument("gated_position: shapes do not fit one another");
  const Shapes s{xd[1], xd[2], pd[1], pd[3] / 2, hd[2] / pd[3], w1d[1], w2d[1]};
  const int64_t r = s.taps - 1, f = s.features, l = s.layers, width = xd[0] - r, reach = pd[0] - width;
  // Every weight's size, so that no read can leave its buffer.
  if (s.taps < 1 || width < 1 || pd[2] != s.batch || static_cast<int64_t>(dilations.size()) != l ||
      hd[0] != l || hd[1] != f || h_first.element_count() != s.taps * s.colours * f ||
      h_first_bias.element_count() != f || res_w.element_count() != l * f * f || res_b.element_count() != l * f ||
      w1d[0] != f || b1.element_count() != s.hidden || w2d[0] != s.hidden || b2.element_count() != s.outputs ||
      raw->element_count() != s.batch * s.outputs)
    return ffi::Error::InvalidArgument("gated_position: shapes do not fit one another");
  const int64_t j = j_buf.typed_data()[0];
  if (j < 0 || j >= width) return ffi::Error::InvalidArgument("gated_position: position out of range");
  for (int64_t d : dilations)
    if (d < 1 || d * r > reach) return ffi::Error::InvalidArgument("gated_position: dilation past the buffer");
  const Weights w{h_first.typed_data(), h_first_bias.typed_data(), h.typed_data(), res_w.typed_data(),
                  res_b.typed_data(), w1.typed_data(), b1.typed_data(), w2.typed_data(), b2.typed_data(),
                  dilations.begin()};
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), s.batch / kMinRows));
  ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t b0 = s.batch * c / chunks, b1 = s.batch * (c + 1) / chunks;
    Position(s, w, j, x_row.typed_data(), pending, write, raw->typed_data(), b0, b1);
  });
  return ffi::Error::Success();
}

ffi::Error Write(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> j, ffi::Buffer<ffi::F32> x_row,
                 ffi::Buffer<ffi::F32> pending, ffi::Buffer<ffi::F32> h_first, ffi::Buffer<ffi::F32> h_first_bias,
                 ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> res_w, ffi::Buffer<ffi::F32> res_b,
                 ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                 ffi::Span<const int64_t> dilations, ffi::ResultBuffer<ffi::F32> raw,
                 ffi::ResultBuffer<ffi::F32> pending_out) {
  if (pending_out->typed_data() != pending.typed_data())
    return ffi::Error::InvalidArgument("gated_position: the pending buffer must be aliased to its result");
  return Run(pool, j, x_row, pending, h_first, h_first_bias, h, res_w, res_b, w1, b1, w2, b2, dilations,
             raw, pending_out->typed_data(), true);
}

ffi::Error Read(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> j, ffi::Buffer<ffi::F32> x_row,
                ffi::Buffer<ffi::F32> pending, ffi::Buffer<ffi::F32> h_first, ffi::Buffer<ffi::F32> h_first_bias,
                ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> res_w, ffi::Buffer<ffi::F32> res_b,
                ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                ffi::Span<const int64_t> dilations, ffi::ResultBuffer<ffi::F32> raw) {
  // Read only: the pending buffer is not written (const_cast for the shared code path, which skips writes).
  return Run(pool, j, x_row, pending, h_first, h_first_bias, h, res_w, res_b, w1, b1, w2, b2, dilations,
             raw, const_cast<float*>(pending.typed_data()), false);
}

// Row i of vertical layer l (dilation d), per image b and column x, from its dot input in [B, W, K] (the
// previous layer's gated output at each of this layer's column taps): z = in[b] x weights [K, (r+1)*2F]
// (block s is kernel row r - s), and with S = d*r + 1 ring slots [S, B, W, 2F] (slot (i + d*s) % S holds
// row i + d*s's sum so far):
//   ring[(i + d*s) % S] += z block s for s = 1..r-1, and the slot of row i + d*r (just read by row i - 1)
//   starts as bias + z block r;  pre = ring[i % S] + z block 0;  g = gate(pre + cond[b]);
//   pending[x, l, b] = pre x link + row_bias + cond[b]: layer l's slot of the horizontal stack's pending
//   buffer [W + reach, L, B, 2F] as the row starts (zero in the reach columns past the row, which only
//   absorb the positions' writes);
//   cols[b, x, t*F ..] = g[b, x + (t - c)*shift] for t < T = 2c + 1 (zero past the row's edges): the next
//   layer's dot input (T = 0 for the last layer).
// XLA ran these as the dot, some eight memory-bound ops around it, the link's small dot at about a third of
// the matmul peak, and a transpose and pad of the five links into the pending buffer (Gated PixelCNN MNIST,
// batch 64: ~150 of ~230 ms of a sample); here one image's row at a time, its dot's result, gates and link
// in cache, each element of the buffers is read once and written once.
struct Vertical {
  int64_t batch, width, features, taps, slots, dilation, shift, col_taps, layer, layers, columns, inputs;
};

void VerticalRows(const Vertical& v, int64_t i, const float* in, const float* weights, float* ring,
                  const float* bias, const float* cond, const float* link, const float* row_bias, float* pending,
                  float* cols, int64_t b0, int64_t b1) {
  const int64_t f = v.features, f2 = 2 * f, r = v.taps - 1, w = v.width, c = (v.col_taps - 1) / 2;
  const int64_t slot_size = v.batch * w * f2, ct = v.col_taps * f, slot_col = v.layers * v.batch * f2;
  float *const z = Scratch(kVerticalScratch, w * (v.taps * f2 + f2 + f)), *const pre = z + w * v.taps * f2,
              *const g = pre + w * f2;
  for (int64_t b = b0; b < b1; ++b) {
    const float* cb = cond + b * f2;
    Matmul(in + b * w * v.inputs, weights, z, w, v.inputs, v.taps * f2);
    for (int64_t x = 0; x < w; ++x) {
      const int64_t px = (b * w + x) * f2;
      const float* zx = z + x * v.taps * f2;
      for (int64_t s = 1; s <= r; ++s) {
        float* slot = ring + ((i + v.dilation * s) % v.slots) * slot_size + px;
        const float* zs = zx + s * f2;
        if (s == r)
          for (int64_t e = 0; e < f2; ++e) slot[e] = bias[e] + zs[e];
        else
          for (int64_t e = 0; e < f2; ++e) slot[e] += zs[e];
      }
      const float* now = ring + (i % v.slots) * slot_size + px;
      float* p = pre + x * f2;
      for (int64_t e = 0; e < f2; ++e) p[e] = now[e] + zx[e];
      GateRow(p, cb, g + x * f, f);
    }
    // Column x's slot for image b is pending[x, l, b]: the columns' slots lie slot_col apart.
    float* slots = pending + (v.layer * v.batch + b) * f2;
    Matmul(pre, f2, link, slots, slot_col, w, f2, f2);
    for (int64_t x = 0; x < w; ++x)
      for (int64_t e = 0; e < f2; ++e) slots[x * slot_col + e] += row_bias[e] + cb[e];
    for (int64_t x = w; x < v.columns; ++x) std::fill(slots + x * slot_col, slots + x * slot_col + f2, 0.f);
    for (int64_t x = 0; x < w; ++x)
      for (int64_t t = 0; t < v.col_taps; ++t) {
        const int64_t src = x + (t - c) * v.shift;
        float* dst = cols + (b * w + x) * ct + t * f;
        if (src < 0 || src >= w)
          std::fill(dst, dst + f, 0.f);
        else
          std::copy(g + src * f, g + (src + 1) * f, dst);
      }
  }
}

ffi::Error VerticalRow(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> i_buf, ffi::Buffer<ffi::F32> in,
                       ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> ring_in, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::F32> cond, ffi::Buffer<ffi::F32> link, ffi::Buffer<ffi::F32> row_bias,
                       ffi::Buffer<ffi::F32> pending_in,
                       int64_t layer, int64_t dilation, int64_t shift, ffi::ResultBuffer<ffi::F32> ring,
                       ffi::ResultBuffer<ffi::F32> pending, ffi::ResultBuffer<ffi::F32> cols) {
  if (ring->typed_data() != ring_in.typed_data() || pending->typed_data() != pending_in.typed_data())
    return ffi::Error::InvalidArgument("gated_vertical: the ring and pending buffer must be aliased to their results");
  const auto xd = in.dimensions(), wd = weights.dimensions(), rd = ring_in.dimensions(), qd = pending_in.dimensions(),
             cd = cols->dimensions();
  if (xd.size() != 3 || wd.size() != 2 || rd.size() != 4 || qd.size() != 4 || cd.size() != 3 || rd[3] % 2 ||
      rd[3] == 0)
    return ffi::Error::InvalidArgument("gated_vertical: shapes do not fit one another");
  const int64_t f2 = rd[3];
  const Vertical v{rd[1], rd[2], f2 / 2, wd[1] / f2, rd[0], dilation, shift, cd[2] / (f2 / 2), layer, qd[1], qd[0],
                   xd[2]};
  if (xd[0] != v.batch || xd[1] != v.width || wd[0] != v.inputs || wd[1] != v.taps * f2 || v.taps < 2 ||
      v.slots != dilation * (v.taps - 1) + 1 || dilation < 1 || shift < 1 || qd[0] < v.width || layer < 0 ||
      layer >= qd[1] || qd[2] != v.batch || qd[3] != f2 || cd[0] != v.batch || cd[1] != v.width ||
      cd[2] != v.col_taps * v.features || (v.col_taps != 0 && v.col_taps % 2 == 0) ||
      bias.element_count() != f2 || cond.element_count() != v.batch * f2 || link.element_count() != f2 * f2 ||
      row_bias.element_count() != f2)
    return ffi::Error::InvalidArgument("gated_vertical: shapes do not fit one another");
  const int64_t i = i_buf.typed_data()[0];
  if (i < 0) return ffi::Error::InvalidArgument("gated_vertical: negative row");
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), v.batch / kMinRows));
  ParallelFor(pool, chunks, [&](int64_t k) {
    VerticalRows(v, i, in.typed_data(), weights.typed_data(), ring->typed_data(), bias.typed_data(),
                 cond.typed_data(), link.typed_data(), row_bias.typed_data(), pending->typed_data(),
                 cols->typed_data(), v.batch * k / chunks, v.batch * (k + 1) / chunks);
  });
  return ffi::Error::Success();
}

}  // namespace

#define JAXCONV_GATED_ARGS                  \
  .Ctx<ffi::ThreadPool>()                   \
      .Arg<ffi::Buffer<ffi::S32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Arg<ffi::Buffer<ffi::F32>>()         \
      .Attr<ffi::Span<const int64_t>>("dilations")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvGatedPositionWrite, Write,
                              ffi::Ffi::Bind() JAXCONV_GATED_ARGS.Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvGatedPositionRead, Read,
                              ffi::Ffi::Bind() JAXCONV_GATED_ARGS.Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvGatedVerticalRow, VerticalRow,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("shift")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
