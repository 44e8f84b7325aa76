// The kernel gradient of a float32 NHWC/HWIO convolution on the CPU, as an XLA FFI handler.
//
// Why by hand: XLA:CPU computes this gradient as a convolution over the batch (Eigen's kernels) and
// runs at 15-30 GFLOP/s on PixelCNN's shapes (1x1 32->16 at 28x28, batch 64: 2.6 ms against oneDNN's
// 0.3 ms in PyTorch); every pure-XLA rewrite measured (X^T G as one dot, split-K, per-tap dots) was no
// faster (docs/benchmarks.md). oneDNN itself is on PyPI only with the SYCL runtime beside it.
// Built on first use (jaxconv/native_build.py), registered by cpu_kernel_grad.py.
//
// dW[i, j, c, o] = sum over b, y, x of xpad[b, y*sh + i*dh, x*sw + j*dw, c] * g[b, y, x, o]: for each
// tap a GEMM whose long dimension is the output positions. The accumulator tile (16 input channels x
// 16 output channels) stays in registers while one image's positions stream through; images are
// spread over XLA's intra-op threads in fixed chunks, each chunk with its own partial dW, summed at the
// end in chunk order.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t batch, h, w, cin, ho, wo, cout, kh, kw, sh, sw, pt, pl, dh, dw;
};

constexpr int kOB = 16;  // output channels per tile: one 512-bit (or two 256-bit) vector
constexpr int kCB = 16;  // input channels per tile: 16 accumulator registers

// 16 floats, unaligned: GCC's vector extension, one register with AVX-512, two with AVX2.
typedef float Vec __attribute__((vector_size(64), aligned(4)));

// acc[c][o] += sum over rows r < m and positions p < n of x[r * xr + p * xs + c] * g[r * gr + p * gs + o],
// c < CB, o < 16: the CB accumulators live in registers, each position costs one load of g and CB
// broadcast multiply-adds.
template <int CB>
inline void Tile(const float* x, int64_t xr, int64_t xs, const float* g, int64_t gr, int64_t gs, int64_t m, int64_t n,
                 float* acc, int64_t acc_stride) {
  Vec a[CB];
  for (int c = 0; c < CB; ++c) a[c] = *reinterpret_cast<const Vec*>(acc + c * acc_stride);
  for (int64_t r = 0; r < m; ++r) {
    const float* xrow = x + r * xr;
    const float* grow = g + r * gr;
    for (int64_t p = 0; p < n; ++p) {
      const Vec gv = *reinterpret_cast<const Vec*>(grow + p * gs);
      const float* xp = xrow + p * xs;
      for (int c = 0; c < CB; ++c) a[c] += xp[c] * gv;
    }
  }
  for (int c = 0; c < CB; ++c) *reinterpret_cast<Vec*>(acc + c * acc_stride) = a[c];
}

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*,
                        int64_t);

TileFn PickCB(int cb) {
  switch (cb) {
    case 1: return Tile<1>;
    case 2: return Tile<2>;
    case 3: return Tile<3>;
    case 4: return Tile<4>;
    case 5: return Tile<5>;
    case 6: return Tile<6>;
    case 7: return Tile<7>;
    case 8: return Tile<8>;
    case 9: return Tile<9>;
    case 10: return Tile<10>;
    case 11: return Tile<11>;
    case 12: return Tile<12>;
    case 13: return Tile<13>;
    case 14: return Tile<14>;
    case 15: return Tile<15>;
    default: return Tile<16>;
  }
}

// Scratch of one chunk of images: its partial dW [kh, kw, Cin, Cout], and for the last Cout % 16 output
// channels (all of them when Cout < 16) their output gradient copied to 16 zero-padded columns and a
// partial dW [kh, kw, Cin, 16] of those columns, so that the narrow part runs the same vector tile.
struct Partial {
  std::vector<float> dw, tail_g, tail_dw;
};

// The (non-empty) tile over output rows [y0, y1) and columns [xa, xb) for every output channel: ``xp``
// is the input of the first "channel" at (y0, xa), consecutive channels are consecutive floats of x and
// consecutive rows of dW from row ``r`` (dW viewed as [kh * kw * Cin, Cout]).
void Span(const Geometry& s, const float* g_image, Partial& part, const float* xp, int channels, int64_t y0,
          int64_t y1, int64_t xa, int64_t xb, int64_t r) {
  const TileFn tile = PickCB(channels);
  const int64_t xr = s.sh * s.w * s.cin, xs = s.sw * s.cin, full_cout = s.cout / kOB * kOB;
  for (int64_t o = 0; o < full_cout; o += kOB)
    tile(xp, xr, xs, g_image + (y0 * s.wo + xa) * s.cout + o, s.wo * s.cout, s.cout, y1 - y0, xb - xa,
         part.dw.data() + r * s.cout + o, s.cout);
  if (full_cout < s.cout)
    tile(xp, xr, xs, part.tail_g.data() + (y0 * s.wo + xa) * kOB, s.wo * kOB, kOB, y1 - y0, xb - xa,
         part.tail_dw.data() + r * kOB, kOB);
}

// One image's contribution to ``part``.
void Image(const Geometry& s, const float* x, const float* g, int64_t b, Partial& part) {
  const int64_t full_cout = s.cout / kOB * kOB, tail = s.cout - full_cout;
  const float* g_image = g + b * s.ho * s.wo * s.cout;
  if (tail) {
    for (int64_t p = 0; p < s.ho * s.wo; ++p)
      std::memcpy(part.tail_g.data() + p * kOB, g_image + p * s.cout + full_cout, tail * sizeof(float));
  }
  // With one input channel and no dilation along the width, a row's kw taps read consecutive input
  // pixels: where all of them are inside the image they are the tile's channels, one load of the
  // output gradient for kw multiply-adds instead of one.
  const bool taps_as_channels = s.cin == 1 && s.dw == 1 && s.kw <= kCB;
  for (int64_t i = 0; i < s.kh; ++i) {
    // Output rows y whose input row y*sh + i*dh - pt lies inside the image.
    int64_t y0 = 0, y1 = s.ho;
    while (y0 < y1 && y0 * s.sh + i * s.dh - s.pt < 0) ++y0;
    while (y1 > y0 && (y1 - 1) * s.sh + i * s.dh - s.pt >= s.h) --y1;
    if (y0 >= y1) continue;
    const int64_t yi = y0 * s.sh + i * s.dh - s.pt;
    // The input of tap (i, j), channel c, at output (y0, column).
    auto input = [&](int64_t j, int64_t column, int64_t c) {
      return x + ((b * s.h + yi) * s.w + column * s.sw + j * s.dw - s.pl) * s.cin + c;
    };
    auto columns = [&](int64_t j, int64_t& x0, int64_t& x1) {
      x0 = 0, x1 = s.wo;
      while (x0 < x1 && x0 * s.sw + j * s.dw - s.pl < 0) ++x0;
      while (x1 > x0 && (x1 - 1) * s.sw + j * s.dw - s.pl >= s.w) --x1;
    };
    int64_t xa = s.wo, xb = s.wo;  // columns done with the taps as channels
    if (taps_as_channels) {
      int64_t lo = 0, hi = s.wo;
      for (int64_t j = 0; j < s.kw; ++j) {
        int64_t x0, x1;
        columns(j, x0, x1);
        lo = std::max(lo, x0), hi = std::min(hi, x1);
      }
      if (lo < hi) {
        xa = lo, xb = hi;
        Span(s, g_image, part, input(0, xa, 0), static_cast<int>(s.kw), y0, y1, xa, xb, i * s.kw);
      }
    }
    for (int64_t j = 0; j < s.kw; ++j) {
      int64_t x0, x1;
      columns(j, x0, x1);
      const int64_t t = i * s.kw + j;
      // Columns left of and right of [xa, xb).
      const int64_t left_end = std::min(x1, xa), right_start = std::max(x0, xb);
      for (int64_t c = 0; c < s.cin; c += kCB) {
        const int channels = static_cast<int>(std::min<int64_t>(kCB, s.cin - c));
        // Only non-empty spans form their input pointer: an empty one's may lie past the end of x.
        if (x0 < left_end) Span(s, g_image, part, input(j, x0, c), channels, y0, y1, x0, left_end, t * s.cin + c);
        if (right_start < x1)
          Span(s, g_image, part, input(j, right_start, c), channels, y0, y1, right_start, x1, t * s.cin + c);
      }
    }
  }
}

// The batch is cut into kChunks runs of images (fewer for a smaller batch), each summed into its own
// partial dW, and the partials are added in chunk order: the result is the same bit for bit whichever
// thread takes which chunk (a resumed run repeats the interrupted one exactly).
constexpr int64_t kChunks = 8;

// Work shared by the calling thread and the pool's tasks. A task that starts after all chunks are
// taken touches nothing but the counters, which it keeps alive through its shared_ptr: so the caller
// waits only for chunks in progress, never for a queued task (no deadlock when every pool thread is
// itself waiting in such a call).
struct Shared {
  Geometry s;
  const float* x;
  const float* g;
  std::vector<Partial> partial;  // one per chunk
  std::atomic<int64_t> next_chunk{0}, done_chunks{0};

  void Work() {
    const int64_t chunks = static_cast<int64_t>(partial.size());
    for (int64_t k; (k = next_chunk.fetch_add(1)) < chunks;) {
      for (int64_t b = k * s.batch / chunks; b < (k + 1) * s.batch / chunks; ++b) Image(s, x, g, b, partial[k]);
      done_chunks.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,
                      int64_t dwd) {
  const auto xd = x.dimensions(), gd = g.dimensions(), kd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || kd[2] != xd[3] || kd[3] != gd[3] || xd[0] != gd[0])
    return ffi::Error::InvalidArgument("conv_kernel_grad: expected x [B,H,W,Cin], g [B,Ho,Wo,Cout], dW [kh,kw,Cin,Cout]");
  const Geometry s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], kd[0], kd[1], sh, sw, pt, pl, dh, dwd};
  const int64_t size = s.kh * s.kw * s.cin * s.cout;
  const int64_t chunks = std::min(s.batch, kChunks);
  const int64_t taps_cin = s.kh * s.kw * s.cin, full_cout = s.cout / kOB * kOB, tail = s.cout - full_cout;
  auto shared = std::make_shared<Shared>();
  shared->s = s;
  shared->x = x.typed_data();
  shared->g = g.typed_data();
  Partial zero{std::vector<float>(size, 0.0f), std::vector<float>(tail ? s.ho * s.wo * kOB : 0, 0.0f),
               std::vector<float>(tail ? taps_cin * kOB : 0, 0.0f)};
  shared->partial.assign(chunks, zero);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  while (shared->done_chunks.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
  float* out = dw->typed_data();
  std::memset(out, 0, size * sizeof(float));
  for (const Partial& part : shared->partial) {
    for (int64_t k = 0; k < size; ++k) out[k] += part.dw[k];
    for (int64_t r = 0; tail && r < taps_cin; ++r)
      for (int64_t o = 0; o < tail; ++o) out[r * s.cout + full_cout + o] += part.tail_dw[r * kOB + o];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));
