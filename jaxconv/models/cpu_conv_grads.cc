// The kernel gradient of a float32 NHWC/HWIO convolution on the CPU, as an XLA FFI handler.
//
// Why by hand: XLA:CPU computes this gradient as a convolution over the batch (Eigen's kernels) and
// runs at 15-30 GFLOP/s on PixelCNN's shapes (1x1 32->16 at 28x28, batch 64: 2.6 ms against oneDNN's
// 0.3 ms in PyTorch); every pure-XLA rewrite measured (X^T G as one dot, split-K, per-tap dots) was no
// faster (docs/benchmarks.md). oneDNN (cpu_onednn.cc) loses to this kernel on PixelCNN's dilated and
// small-channel shapes (PixelCNN MNIST 2x3 dilation 2, 32->64, batch 64: 17.5 ms against 6.7).
// Built on first use (jaxconv/native_build.py), registered by cpu_conv_grads.py.
//
// dW[i, j, c, o] = sum over b, y, x of xpad[b, y*sh + i*dh, x*sw + j*dw, c] * g[b, y, x, o]: for each
// tap a GEMM whose long dimension is the output positions. The accumulator tile (input channels x output
// channels: 16 x 16 with AVX-512, 12 x 8 with AVX2) stays in registers while one image's positions stream
// through; images are spread over XLA's intra-op threads in fixed chunks, each chunk with its own partial
// dW, summed at the end in chunk order.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jaxconv::ParallelFor;

namespace {

struct Geometry {
  int64_t batch, h, w, cin, ho, wo, cout, kh, kw, sh, sw, pt, pl, dh, dw;
};

// The accumulator tile: kCB input channels x kOB output channels, one vector of kOB floats per input
// channel, all in registers with one more for g (32 with AVX-512, 16 with AVX2). A 16-float vector
// without AVX-512 is no pair of AVX2 registers to GCC: it went through the stack, and this gradient ran
// at 8 GFLOP/s on a Zen 3 EPYC (PixelCNN 3x3 32->64 at 28x28, batch 64: 220-264 ms against XLA's 25).
#if defined(__AVX512F__)
constexpr int kOB = 16;
constexpr int kCB = 16;
#else
constexpr int kOB = 8;
constexpr int kCB = 12;
#endif

typedef float Vec __attribute__((vector_size(kOB * sizeof(float)), aligned(4)));

// acc[c][o] += sum over rows r < m and positions p < n of x[r * xr + p * xs + c] * g[r * gr + p * gs + o],
// c < CB, o < kOB: the CB accumulators live in registers, each position costs one load of g and CB
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
    default: return Tile<kCB>;
  }
}

// Scratch of one chunk of images: its partial dW [kh, kw, Cin, Cout], and for the last Cout % kOB output
// channels (all of them when Cout < kOB) their output gradient copied to kOB zero-padded columns and a
// partial dW [kh, kw, Cin, kOB] of those columns, so that the narrow part runs the same vector tile.
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
  const Partial zero{std::vector<float>(size, 0.0f), std::vector<float>(tail ? s.ho * s.wo * kOB : 0, 0.0f),
                     std::vector<float>(tail ? taps_cin * kOB : 0, 0.0f)};
  std::vector<Partial> partial(chunks, zero);  // one per chunk
  ParallelFor(pool, chunks, [&](int64_t k) {
    for (int64_t b = k * s.batch / chunks; b < (k + 1) * s.batch / chunks; ++b)
      Image(s, x.typed_data(), g.typed_data(), b, partial[k]);
  });
  float* out = dw->typed_data();
  std::memset(out, 0, size * sizeof(float));
  for (const Partial& part : partial) {
    for (int64_t k = 0; k < size; ++k) out[k] += part.dw[k];
    for (int64_t r = 0; tail && r < taps_cin; ++r)
      for (int64_t o = 0; o < tail; ++o) out[r * s.cout + full_cout + o] += part.tail_dw[r * kOB + o];
  }
  return ffi::Error::Success();
}


// ----------------------------------------------------------------------------------------------
// The input gradient of a stride-1 conv:
//   dX[b, p, q, c] = sum over i, j, o of g[b, p + pt - i*dh, q + pl - j*dw, o] * W[i, j, c, o]
// (g zero outside the output). Why by hand: XLA:CPU computes it as a conv with Cin output channels,
// which for few input channels (LeNet C3: 6) misses Eigen's fast path: 10.6 ms for C3 at batch 256,
// PyTorch 2.4; its pure-XLA rewrites (taps, im2col) were no faster in the model (docs/benchmarks.md).
// Vectorised over kV consecutive output columns q: each image's output gradient is first copied to
// [rows, Cout, columns] with zero borders, so that a tap's kV columns are one load and no bounds are
// checked; a block of kRows dX rows x kV columns x up to kInCB input channels keeps its accumulators
// in registers over all taps and output channels, one broadcast weight per multiply-add.

#if defined(__AVX512F__)
constexpr int kV = 16;
constexpr int kInCB = 8;
#else
constexpr int kV = 8;
constexpr int kInCB = 6;
#endif
constexpr int kRows = 2;
typedef float ColVec __attribute__((vector_size(kV * sizeof(float)), aligned(4)));

struct InGeometry {
  int64_t batch, h, w, cin, ho, wo, cout, kh, kw, pt, pl, dh, dw;
  int64_t ymin, rows, xmin, cols;  // the copied gradient: rows ymin.., columns xmin.. (zero outside g)
};

InGeometry MakeInGeometry(int64_t batch, int64_t h, int64_t w, int64_t cin, int64_t ho, int64_t wo, int64_t cout,
                          int64_t kh, int64_t kw, int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  InGeometry s{batch, h, w, cin, ho, wo, cout, kh, kw, pt, pl, dh, dw, 0, 0, 0, 0};
  const int64_t wpad = (w + kV - 1) / kV * kV;  // column blocks read kV columns from each q0
  s.ymin = std::min<int64_t>(0, pt - (kh - 1) * dh);
  s.rows = std::max<int64_t>(ho - 1, h - 1 + pt) - s.ymin + 1;
  s.xmin = std::min<int64_t>(0, pl - (kw - 1) * dw);
  s.cols = std::max<int64_t>(wo - 1, wpad - 1 + pl) - s.xmin + 1;
  return s;
}

// dX rows p .. p+R-1, columns q0 .. q0+kV-1 (those < w stored), channels c0 .. c0+CB-1 of one image.
template <int R, int CB>
void InBlock(const InGeometry& s, const float* gt, const float* wt, int64_t p, int64_t q0, int64_t c0, float* dx) {
  ColVec acc[R][CB];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CB; ++c) acc[r][c] = ColVec{} ;
  const int64_t row_stride = s.cout * s.cols;
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      const float* gbase = gt + (p + s.pt - i * s.dh - s.ymin) * row_stride + (q0 + s.pl - j * s.dw - s.xmin);
      const float* wbase = wt + (i * s.kw + j) * s.cout * s.cin + c0;
      for (int64_t o = 0; o < s.cout; ++o) {
        ColVec gv[R];
        for (int r = 0; r < R; ++r) gv[r] = *reinterpret_cast<const ColVec*>(gbase + r * row_stride + o * s.cols);
        const float* wv = wbase + o * s.cin;
        for (int c = 0; c < CB; ++c) {
          const float wc = wv[c];
          for (int r = 0; r < R; ++r) acc[r][c] += gv[r] * wc;
        }
      }
    }
  }
  const int64_t columns = std::min<int64_t>(kV, s.w - q0);
  for (int r = 0; r < R; ++r)
    for (int64_t l = 0; l < columns; ++l) {
      float* out = dx + ((p + r) * s.w + q0 + l) * s.cin + c0;
      for (int c = 0; c < CB; ++c) out[c] = acc[r][c][l];
    }
}

using InBlockFn = void (*)(const InGeometry&, const float*, const float*, int64_t, int64_t, int64_t, float*);

template <int R>
InBlockFn PickInCB(int cb) {
  switch (cb) {
    case 1: return InBlock<R, 1>;
    case 2: return InBlock<R, 2>;
    case 3: return InBlock<R, 3>;
    case 4: return InBlock<R, 4>;
    case 5: return InBlock<R, 5>;
    case 6: return InBlock<R, 6>;
#if defined(__AVX512F__)
    case 7: return InBlock<R, 7>;
    default: return InBlock<R, 8>;
#else
    default: return InBlock<R, 6>;
#endif
  }
}

// One image: its output gradient copied to gt ([rows, Cout, cols], zero borders), then every block.
void InImage(const InGeometry& s, const float* g, const float* wt, int64_t b, float* dx) {
  std::vector<float> gt(s.rows * s.cout * s.cols, 0.0f);
  const float* g_image = g + b * s.ho * s.wo * s.cout;
  for (int64_t y = 0; y < s.ho; ++y)
    for (int64_t x = 0; x < s.wo; ++x) {
      const float* src = g_image + (y * s.wo + x) * s.cout;
      float* dst = gt.data() + (y - s.ymin) * s.cout * s.cols + (x - s.xmin);
      for (int64_t o = 0; o < s.cout; ++o) dst[o * s.cols] = src[o];
    }
  float* dx_image = dx + b * s.h * s.w * s.cin;
  for (int64_t c0 = 0; c0 < s.cin; c0 += kInCB) {
    const int cb = static_cast<int>(std::min<int64_t>(kInCB, s.cin - c0));
    const InBlockFn rows = PickInCB<kRows>(cb), row = PickInCB<1>(cb);
    for (int64_t q0 = 0; q0 < s.w; q0 += kV) {
      int64_t p = 0;
      for (; p + kRows <= s.h; p += kRows) rows(s, gt.data(), wt, p, q0, c0, dx_image);
      for (; p < s.h; ++p) row(s, gt.data(), wt, p, q0, c0, dx_image);
    }
  }
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t pt, int64_t pl, int64_t dh, int64_t dwd) {
  const auto gd = g.dimensions(), kd = w.dimensions(), xd = dx->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || kd[2] != xd[3] || kd[3] != gd[3] || xd[0] != gd[0])
    return ffi::Error::InvalidArgument("conv_input_grad: expected g [B,Ho,Wo,Cout], W [kh,kw,Cin,Cout], dX [B,H,W,Cin]");
  const InGeometry s = MakeInGeometry(xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], kd[0], kd[1], pt, pl, dh, dwd);
  std::vector<float> wt(s.kh * s.kw * s.cout * s.cin);  // W as [kh, kw, Cout, Cin]
  const float* wd = w.typed_data();
  for (int64_t t = 0; t < s.kh * s.kw; ++t)
    for (int64_t c = 0; c < s.cin; ++c)
      for (int64_t o = 0; o < s.cout; ++o) wt[(t * s.cout + o) * s.cin + c] = wd[(t * s.cin + c) * s.cout + o];
  // Each image's dX is its own: no sums across threads, the result does not depend on which took which image.
  ParallelFor(pool, s.batch, [&](int64_t b) { InImage(s, g.typed_data(), wt.data(), b, dx->typed_data()); });
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));
