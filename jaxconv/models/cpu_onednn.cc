// A float32 NHWC/HWIO convolution on the CPU by oneDNN, as XLA FFI handlers: the output (also plus a bias
// and through a ReLU), the input gradient and the kernel gradient.
//
// Why: XLA:CPU runs its convs on Eigen's kernels; oneDNN (what PyTorch runs on the CPU) is 1.2-2x faster
// on the big-channel layers (AlexNet's), and XLA's own oneDNN thunks are compiled out of the jaxlib
// release build (docs/xla-cpu-onednn.md). oneDNN comes from PyPI (onednn-cpu-gomp); built on first use
// (jaxconv/native_build.py), registered by cpu_onednn.py, which passes only non-negative padding.
//
// Activations stay in XLA's NHWC buffers (oneDNN's nhwc tag, no copy); the kernel is reordered from
// HWIO (with groups: [kh, kw, Cin/G, G, Cout/G], oneDNN's hwigo) to the blocked layout oneDNN picks, and
// the kernel gradient back. Primitives are built once per geometry and kept; each call brings its own
// scratchpad, so concurrent calls (two devices of one process) share nothing mutable.
//
// The bias and the ReLU are applied as the output is written (a oneDNN post-op): XLA would read and write
// the output once more (why: jaxconv/models/conv_impls.py, apply).

#include <cstdint>
#include <cstdlib>
#include <new>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, c, o, kh, kw, ho, wo, sh, sw, pt, pb, pl, pr, dh, dw, groups;
  bool bias_relu = false;
  auto Key() const {
    return std::make_tuple(n, h, w, c, o, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, groups, bias_relu);
  }

  memory::desc Image() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc Output() const { return {{n, o, ho, wo}, memory::data_type::f32, memory::format_tag::nhwc}; }
  // A zero descriptor is oneDNN's "no bias".
  memory::desc Bias() const {
    return bias_relu ? memory::desc({o}, memory::data_type::f32, memory::format_tag::a) : memory::desc();
  }
  memory::desc Kernel(bool any) const {
    if (groups == 1)
      return {{o, c, kh, kw}, memory::data_type::f32, any ? memory::format_tag::any : memory::format_tag::hwio};
    return {{groups, o / groups, c / groups, kh, kw}, memory::data_type::f32,
            any ? memory::format_tag::any : memory::format_tag::hwigo};
  }
};

struct Primitives {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc input_pd;
  dnnl::convolution_backward_weights::primitive_desc kernel_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data input_grad;
  dnnl::convolution_backward_weights kernel_grad;
};

dnnl::primitive_attr Attributes(bool relu) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  return attr;
}

std::shared_ptr<const Primitives> Build(const Geometry& g) {
  auto& engine = Engine();
  const memory::dims strides{g.sh, g.sw}, dilation{g.dh - 1, g.dw - 1}, low{g.pt, g.pl}, high{g.pb, g.pr};
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto image = g.Image(), output = g.Output(), kernel = g.Kernel(true);
  dnnl::convolution_forward::primitive_desc forward_pd(engine, dnnl::prop_kind::forward_training, algo, image,
                                                       kernel, g.Bias(), output, strides, dilation, low, high,
                                                       Attributes(g.bias_relu));
  Primitives p{forward_pd, {}, {}, dnnl::convolution_forward(forward_pd), {}, {}};
  // The bias-and-ReLU call is a forward pass only: its gradients run on the plain geometry's primitives.
  if (!g.bias_relu) {
    p.input_pd = dnnl::convolution_backward_data::primitive_desc(engine, algo, image, kernel, output, strides,
                                                                 dilation, low, high, forward_pd, Attributes(false));
    p.kernel_pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, algo, image, kernel, output, strides, dilation, low, high, forward_pd, Attributes(false));
    p.input_grad = dnnl::convolution_backward_data(p.input_pd);
    p.kernel_grad = dnnl::convolution_backward_weights(p.kernel_pd);
  }
  return std::make_shared<const Primitives>(std::move(p));
}

std::shared_ptr<const Primitives> Get(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.Key()), std::shared_ptr<const Primitives>> built;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = built[g.Key()];
  if (!entry) entry = Build(g);
  return entry;
}

memory Wrap(const memory::desc& desc, const void* data) { return memory(desc, Engine(), const_cast<void*>(data)); }

// Uninitialised, 64-byte aligned bytes: a std::vector<char> would zero a scratchpad of megabytes per call.
struct Scratch {
  explicit Scratch(size_t size)
      : data(size ? static_cast<char*>(std::aligned_alloc(64, (size + 63) / 64 * 64)) : nullptr) {
    if (size && !data) throw std::bad_alloc();
  }
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* data;
};

memory Reorder(const memory& from, memory to) {
  dnnl::stream stream(Engine());
  dnnl::reorder(from, to).execute(stream, const_cast<memory&>(from), to);
  stream.wait();
  return to;
}

// A handler's kernel in the layout its primitive wants: XLA's HWIO buffer itself, or a reordered copy in
// storage this owns.
struct KernelIn {
  KernelIn(const Geometry& g, const memory::desc& wanted, const float* data)
      : storage(wanted == g.Kernel(false) ? 0 : wanted.get_size()),
        value(storage.data ? Reorder(Wrap(g.Kernel(false), data), memory(wanted, Engine(), storage.data))
                           : Wrap(g.Kernel(false), data)) {}
  Scratch storage;
  memory value;
};

void Execute(const dnnl::primitive& primitive, const memory::desc& scratchpad,
             std::unordered_map<int, memory> args) {
  Scratch scratch(scratchpad.get_size());
  args.insert({DNNL_ARG_SCRATCHPAD, memory(scratchpad, Engine(), scratch.data)});
  dnnl::stream stream(Engine());
  primitive.execute(stream, args);
  stream.wait();
}

Geometry Make(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> output,
              int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw,
              int64_t groups) {
  return Geometry{image[0], image[1],  image[2], image[3], kernel[3], kernel[0], kernel[1], output[1], output[2],
                  sh,       sw,        pt,       pb,       pl,        pr,        dh,        dw,        groups};
}

template <typename F>
ffi::Error Guarded(F body) {
  try {
    body();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution: unknown error");
  }
  return ffi::Error::Success();
}

#define GEOMETRY_ATTRS                                                                                        \
  int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t groups
#define GEOMETRY_VALUES sh, sw, pt, pb, pl, pr, dh, dw, groups

// bias: null (none) or [Cout], then a ReLU.
void RunForward(Geometry g, const float* x, const float* k, const float* bias, float* y) {
  g.bias_relu = bias != nullptr;
  const auto p = Get(g);
  const KernelIn kernel(g, p->forward_pd.weights_desc(), k);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, Wrap(g.Image(), x)}, {DNNL_ARG_WEIGHTS, kernel.value}, {DNNL_ARG_DST, Wrap(g.Output(), y)}};
  if (bias) args.insert({DNNL_ARG_BIAS, Wrap(g.Bias(), bias)});
  Execute(p->forward, p->forward_pd.scratchpad_desc(), std::move(args));
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                   GEOMETRY_ATTRS) {
  return Guarded([&] {
    RunForward(Make(x.dimensions(), k.dimensions(), y->dimensions(), GEOMETRY_VALUES), x.typed_data(),
               k.typed_data(), nullptr, y->typed_data());
  });
}

// relu(conv(x, k) + b).
ffi::Error BiasRelu(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                    ffi::ResultBuffer<ffi::F32> y, GEOMETRY_ATTRS) {
  return Guarded([&] {
    RunForward(Make(x.dimensions(), k.dimensions(), y->dimensions(), GEOMETRY_VALUES), x.typed_data(),
               k.typed_data(), b.typed_data(), y->typed_data());
  });
}

ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                     GEOMETRY_ATTRS) {
  return Guarded([&] {
    const auto g = Make(dx->dimensions(), k.dimensions(), dy.dimensions(), GEOMETRY_VALUES);
    const auto p = Get(g);
    const KernelIn kernel(g, p->input_pd.weights_desc(), k.typed_data());
    Execute(p->input_grad, p->input_pd.scratchpad_desc(),
            {{DNNL_ARG_DIFF_DST, Wrap(g.Output(), dy.typed_data())}, {DNNL_ARG_WEIGHTS, kernel.value},
             {DNNL_ARG_DIFF_SRC, Wrap(g.Image(), dx->typed_data())}});
  });
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                      GEOMETRY_ATTRS) {
  return Guarded([&] {
    const auto g = Make(x.dimensions(), dk->dimensions(), dy.dimensions(), GEOMETRY_VALUES);
    const auto p = Get(g);
    const auto result = Wrap(g.Kernel(false), dk->typed_data());
    const auto& blocked = p->kernel_pd.diff_weights_desc();
    Scratch storage(blocked == result.get_desc() ? 0 : blocked.get_size());
    const memory computed = storage.data ? memory(blocked, Engine(), storage.data) : result;
    Execute(p->kernel_grad, p->kernel_pd.scratchpad_desc(),
            {{DNNL_ARG_SRC, Wrap(g.Image(), x.typed_data())}, {DNNL_ARG_DIFF_DST, Wrap(g.Output(), dy.typed_data())},
             {DNNL_ARG_DIFF_WEIGHTS, computed}});
    if (storage.data) Reorder(computed, result);
  });
}

}  // namespace

#define BIND_GEOMETRY(binding)                                                                              \
  binding.Attr<int64_t>("sh")                                                                               \
      .Attr<int64_t>("sw")                                                                                  \
      .Attr<int64_t>("pt")                                                                                  \
      .Attr<int64_t>("pb")                                                                                  \
      .Attr<int64_t>("pl")                                                                                  \
      .Attr<int64_t>("pr")                                                                                  \
      .Attr<int64_t>("dh")                                                                                  \
      .Attr<int64_t>("dw")                                                                                  \
      .Attr<int64_t>("groups")

#define F32 ffi::Buffer<ffi::F32>

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvOnednnForward, Forward,
                              BIND_GEOMETRY(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvOnednnBiasRelu, BiasRelu,
                              BIND_GEOMETRY(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvOnednnInputGrad, InputGrad,
                              BIND_GEOMETRY(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvOnednnKernelGrad, KernelGrad,
                              BIND_GEOMETRY(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
