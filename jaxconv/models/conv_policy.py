"""The conv policy: which implementation (``jaxconv.models.conv_impls``) each conv layer uses.

A ``ConvPolicy`` is data, built once from the run's ``conv`` config section (``ConvPolicy.from_config``)
and passed down to every layer, the way Flax's examples pass ``conv: ModuleDef``; nothing here reads the
environment. Its choice for one layer (``choose``), first match wins:
1. ``forced``: that implementation everywhere (benchmarks, debugging; config ``conv.impl``);
2. ``table``: an autotune table written by ``jaxconv bench conv`` (its ``conv_table.json``, config
   ``conv.table``): the measured winner for this exact layer signature on this backend;
3. ``rules`` (``RULES``, or none with config ``conv.rules=none``, to compare with XLA everywhere), in
   order: a rule names an implementation for a backend, a dtype and ranges of Cin, Cout, T, stride,
   output pixels, feature groups, batch size and dilation;
4. ``xla``.
An implementation that cannot run a layer (``fft`` in bfloat16) falls back to ``xla``; a rule naming
``onednn`` where oneDNN cannot be built here is skipped (the next matching rule applies).

``xla_cpu`` says which kernels run the convs XLA computes on CPU, through the XLA compiler options that
``compiler_options`` gives every jitted program that runs the model (train and eval steps, samplers,
autotuning, the conv bench): "eigen" (XLA's own) or "ynnpack" (XLA's default in jaxlib 0.10).

``RULES`` holds the CPU rules, each for a shape class where XLA:CPU's (Eigen) conv misses its fast path
(one-pixel outputs, single-input-channel layers, grouped convs, 1x1 convs to one channel, the input
gradient of convs with few input channels, and in float32 every other kernel gradient; the native C++
kernels compute the gradients they name; README, Benchmarks), and in float32 the shape classes where
oneDNN's convs win; each ``note`` quotes the measurement behind it. To adopt a measured winner for
another shape class, add a ``Rule``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.errors import ConfigError
from jaxconv.models.conv_impls import Padding, built, out_size, pair, parse_impl, supports


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """One conv layer's shape without its batch size: input NHWC [B, height, width, cin], kernel HWIO
    [kh, kw, cin // groups, cout]. ``Signature`` adds where and how it runs; the bench's ``ConvShape``
    (``jaxconv.bench.conv_shapes``) adds what it reports."""

    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    groups: int = 1

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    def out_hw(self) -> tuple[int, int]:
        return (out_size(self.height, self.kh, self.stride[0], self.dilation[0], self.padding[0]),
                out_size(self.width, self.kw, self.stride[1], self.dilation[1], self.padding[1]))

    @property
    def out_pixels(self) -> int:
        ho, wo = self.out_hw()
        return ho * wo

    def geometry(self) -> ConvGeometry:
        """The layer alone, a subclass's own fields dropped: equal for layers of equal shape."""
        return ConvGeometry(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ConvGeometry)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Signature(ConvGeometry):
    """What the choice may depend on: one layer's geometry, batch size, dtype and backend."""

    backend: str
    dtype: str
    batch: int

    @classmethod
    def of(cls, layer: ConvGeometry, batch: int, dtype: Any, backend: str | None = None) -> Signature:
        """``layer`` at this batch size and dtype on ``backend`` (default: JAX's)."""
        return cls(**vars(layer.geometry()), backend=backend or jax.default_backend(), dtype=jnp.dtype(dtype).name,
                   batch=int(batch))

    def key(self) -> str:
        """The autotune table's key: every field but the batch size (tables are per shape class)."""
        p = self.padding
        return (f"{self.backend}/{self.dtype}/{self.height}x{self.width}x{self.cin}->{self.cout}/"
                f"k{self.kh}x{self.kw}/s{self.stride[0]}x{self.stride[1]}/d{self.dilation[0]}x{self.dilation[1]}/"
                f"p{p[0][0]},{p[0][1]},{p[1][0]},{p[1][1]}/g{self.groups}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Use ``impl`` for layers matching every given condition (ranges are inclusive, None = any)."""

    impl: str
    backend: str | None = None  # "cpu", "gpu", "tpu"
    dtype: str | None = None  # "float32", "bfloat16"
    cin: tuple[int, int] | None = None
    cout: tuple[int, int] | None = None
    taps: tuple[int, int] | None = None  # kh * kw
    stride: tuple[int, int] | None = None
    out_pixels: tuple[int, int] | None = None  # Ho * Wo
    groups: tuple[int, int] | None = None
    batch: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None  # the larger of the two
    note: str = ""  # the measurement that justifies the rule

    def matches(self, sig: Signature) -> bool:
        inside = lambda value, span: span is None or span[0] <= value <= span[1]
        return ((self.backend is None or self.backend == sig.backend) and (self.dtype is None or self.dtype == sig.dtype)
                and inside(sig.cin, self.cin) and inside(sig.cout, self.cout) and inside(sig.taps, self.taps)
                and inside(max(sig.stride), self.stride) and inside(sig.out_pixels, self.out_pixels)
                and inside(sig.groups, self.groups) and inside(sig.batch, self.batch)
                and inside(max(sig.dilation), self.dilation))


ANY = (1, 1 << 62)  # an open range's upper end

# XLA:CPU's conv (its Eigen kernels, ``xla_cpu="eigen"``) misses its fast path on these shape classes;
# each alternative is tested equal to XLA's conv (tests/test_bench.py). The notes quote per-pass medians
# (ms: forward / input gradient / kernel gradient, float32) that conv.autotune measured on the 2-core AMD EPYC
# unless they name another machine.
RULES: tuple[Rule, ...] = (
    Rule("im2col", backend="cpu", out_pixels=(1, 1),
         note="one output pixel (LeNet C5, the cached samplers' windows) is one matmul: LeNet C5 b64 "
              "0.28/0.37/0.19 vs XLA 0.23/5.86/0.30"),
    # oneDNN (the library PyTorch runs) where it beats XLA's Eigen convs in all three passes; per-pass ms from
    # `jaxconv bench conv --modes forward,input_grad,kernel_grad --impls xla,native,onednn,torch` on the 2-core
    # Intel Xeon, 2026-12-01.
    Rule("onednn", backend="cpu", dtype="float32", cin=(64, ANY[1]), cout=(64, ANY[1]), taps=(9, ANY[1]),
         dilation=(1, 1),
         note="big-channel layers (AlexNet's): AlexNet-32 conv3 256->384 3x3 b32 16.8/16.0/18.5 vs default "
              "15.3/17.8/28.4 (PyTorch 14.7/15.9/20.8); grouped conv2 96->256 5x5 21.6/22.2/21.9 vs split "
              "22.7/26.6/30.5; AlexNet conv5 13x13 b8 5.6/5.6/5.5 vs split 6.5/8.0/6.9; AlexNet-32 train step "
              "b32 (conv.impl=onednn, in turns with the default): 342.6 vs 388.4 ms, 321.6 vs 388.8"),
    Rule("onednn", backend="cpu", dtype="float32", cin=(128, ANY[1]), cout=(128, ANY[1]), dilation=(1, 1),
         note="wide layers of any kernel size: PixelCNN CIFAR's 1x1 and 2x3 layers (128 to 1024 channels), train "
              "step b16 1895.3 vs 2626.7 ms (tools/ab_step.py with a table naming them, in turns); at 64 channels "
              "Gated PixelCNN MNIST's 1x1 layers on oneDNN took 348.4 vs 330.4 ms. Not dilated: oneDNN's kernel "
              "gradient of Gated PixelCNN MNIST's 2x3/d2 32->64 took 25.8 vs native 7.0"),
    Rule("onednn", backend="cpu", dtype="float32", cin=(32, 63), cout=(64, ANY[1]), taps=(1, 1),
         note="1x1 layers widening to >= 64 channels (the PixelCNN heads' 32->64), whose forward pass XLA runs "
              "as a slow conv: PixelCNN MNIST b64 forward 1.40 vs 5.75, input gradient 1.36 vs 1.11, kernel "
              "gradient 1.52 vs native 1.60; train step b64 (tools/ab_step.py, tables, in turns, with the next "
              "rule) 63.9 vs 68.2 ms; Gated PixelCNN MNIST b64 277.4 vs 280.5, Gated PixelCNN CIFAR b16 542.6 vs "
              "543.7 (its 60->120)"),
    Rule("onednn/onednn/native", backend="cpu", dtype="float32", cin=(16, 63), cout=(16, 63), taps=(6, ANY[1]),
         stride=(1, 1), dilation=(1, 1), groups=(1, 1),
         note="PixelCNN MNIST's masked 2x3 16->16 b64: forward 0.93 vs XLA 1.67, input gradient 1.14 vs 1.48, "
              "kernel gradient native 0.86 vs oneDNN 0.99; train step b64 68.2 vs 71.6 ms"),
    Rule("onednn", backend="cpu", dtype="float32", cin=(1, 3), cout=(6, ANY[1]), taps=(25, ANY[1]),
         note="first layers with full kernels (no input gradient): LeNet C1 1->6 5x5 b256 forward 0.82 vs "
              "taps 1.47, kernel gradient 1.10 vs native 2.24; AlexNet conv1 3->96 11x11/4 b8 kernel gradient "
              "11.3 vs 26.1; LeNet-5 modern train step b256 13.7 vs 14.4 ms (tools/ab_step.py)"),
    Rule("taps/im2col/native", backend="cpu", dtype="float32", cin=(1, 1), taps=(2, 49), batch=(32, ANY[1]),
         note="as the next rule; kernel gradient (a row's taps as the native tile's channels) LeNet C1 b256 1.07 "
              "vs XLA 2.30, PixelCNN 7x7 mask A b64 0.86 vs 1.96"),
    Rule("taps/im2col/xla", backend="cpu", cin=(1, 1), taps=(2, 49), batch=(32, ANY[1]),
         note="single-input-channel layers: LeNet C1 b64 0.30/1.97/1.69 vs XLA 3.12/10.17/1.69, b256 "
              "2.59/9.28/6.19 vs 14.0/52.7/6.19; PixelCNN 7x7 mask A b64 5.33/6.04/4.62 vs 6.65/22.5/4.62"),
    Rule("split", backend="cpu", groups=(2, ANY[1]),
         note="grouped convs, whose kernel gradient by XLA is a slow generic loop: AlexNet-32 conv2 b32 "
              "26.0/26.6/26.2 vs XLA 27.7/33.3/397 and taps 80.3/42.7/33.8; AlexNet conv2 b8 17.4/18.7/19.0 vs "
              "XLA 18.9/22.5/290 and taps 58.4/28.9/24.3"),
    Rule("xla/xla/taps", backend="cpu", taps=(1, 1), cout=(1, 1),
         note="1x1 convs to one channel (the Bernoulli heads): PixelCNN MNIST 64->1 b64 kernel gradient 0.60 "
              "vs XLA 10.4"),
    # XLA's input gradient of a conv with few input channels is a slow generic loop. In float32 the native
    # kernel computes it (and the kernel gradient); otherwise im2col's (one matmul, then the views' sum) wins
    # alone at every batch, but in the model only up to batch 128: its [B, Ho, Wo, T * Cin] intermediate
    # (15 MB for LeNet C3 at batch 256) then makes the views' sum slower than taps'.
    Rule("onednn/native/native", backend="cpu", dtype="float32", cin=(2, 15), taps=(25, ANY[1]), stride=(1, 1),
         note="input gradient LeNet C3 b256 native 2.03 vs XLA 10.57 and taps 9.05 (PyTorch 2.35); train step "
              "(tools/ab_step.py, vs the im2col/taps input gradients, 2-core Intel Xeon): LeNet-5 modern b256 17.2 "
              "vs 24.6 ms, b64 5.1 vs 5.7; LeNet-5 b256 19.7 vs 26.5, b64 5.9 vs 6.5. Forward by oneDNN: C3 b256 "
              "1.01 vs XLA 2.23; LeNet-5 modern train step b256 12.5 vs 13.7 ms, b64 3.8 vs 4.1"),
    Rule("xla/native/native", backend="cpu", dtype="float32", cin=(2, 15), taps=(25, ANY[1]), stride=(1, 1),
         note="as the previous rule where oneDNN cannot be built"),
    Rule("xla/im2col/xla", backend="cpu", cin=(2, 15), taps=(25, ANY[1]), stride=(1, 1), batch=(1, 128),
         note="input gradient alone (bench conv --modes input_grad): LeNet C3 b64 im2col 0.86 vs taps 1.05 and "
              "XLA 1.70 (PyTorch 0.62); train step (tools/ab_step.py, vs taps): LeNet-5 b64 6.8 vs 7.3 ms, "
              "LeNet-5 modern b64 5.0 vs 5.5, b128 8.9 vs 9.2"),
    Rule("xla/taps/xla", backend="cpu", cin=(2, 15), taps=(25, ANY[1]), stride=(1, 1),
         note="LeNet C3 b64 1.05/2.00/0.99 vs XLA 1.05/4.23/0.99; train step at b256 vs im2col's input gradient "
              "(tools/ab_step.py): LeNet-5 25.9 vs 27.7 ms, LeNet-5 modern 20.0 vs 21.9"),
    # XLA:CPU's kernel gradient runs at 15-60 GFLOP/s on most layers; the native kernel's at 60-190
    # (jaxconv bench conv --modes kernel_grad --impls xla,native,torch).
    Rule("xla/xla/native", backend="cpu", dtype="float32", groups=(1, 1),
         note="kernel gradient: PixelCNN MNIST 1x1 32->16 b64 0.26 vs XLA 2.76 (PyTorch 0.34), 2x3 32->64 6.3 "
              "vs 12.5 (7.8), 3x3 16->16 mask B 1.19 vs 4.91 (1.40); PixelCNN CIFAR 2x3 60->120 b16 9.1 vs 12.2 "
              "(9.9); AlexNet-32 conv3 b32 17.6 vs 30.6 (16.3)"),
)


def signature(x_shape, kernel_shape, dtype, strides=1, padding: Padding = ((0, 0), (0, 0)), dilation=1,
              groups: int = 1, backend: str | None = None) -> Signature:
    kh, kw, _, cout = kernel_shape
    layer = ConvGeometry(int(x_shape[1]), int(x_shape[2]), int(x_shape[3]), int(cout), int(kh), int(kw), pair(strides),
                         pair(dilation), tuple(tuple(int(v) for v in p) for p in padding), int(groups))
    return Signature.of(layer, x_shape[0], dtype, backend)


@dataclasses.dataclass(frozen=True)
class ConvPolicy:
    """How every conv layer of a model is computed (see the module docstring for the order)."""

    forced: str = ""  # one implementation (or forward/input_grad/kernel_grad triple) everywhere
    table: tuple[tuple[str, str], ...] = ()  # (Signature.key(), implementation): measured winners
    rules: tuple[Rule, ...] = RULES
    xla_cpu: str = "eigen"  # "eigen" or "ynnpack": the kernels of XLA's convs on CPU

    def compiler_options(self) -> dict[str, str]:
        """XLA compiler options for a jitted program that runs these convs (``jax.jit``'s
        ``compiler_options``): none but on the CPU backend with ``xla_cpu="eigen"``."""
        if self.xla_cpu != "eigen" or jax.default_backend() != "cpu":
            return {}
        return dict(_EIGEN_CONVS) if _accepted(_EIGEN_CONVS) else {}

    def choose(self, sig: Signature) -> str:
        impl = self.forced or dict(self.table).get(sig.key()) or next(
            (rule.impl for rule in self.rules if rule.matches(sig) and built(rule.impl)), "xla")
        return impl if supports(impl, sig.dtype) else "xla"

    @classmethod
    def from_config(cls, config: Any) -> ConvPolicy:
        """From a ``jaxconv.config.ConvConfig`` (reads ``config.table``'s file once); ConfigError if bad."""
        if config.impl:
            try:
                parse_impl(config.impl)
            except ValueError as e:
                raise ConfigError(f"conv.impl: {e}") from None
        if config.rules not in ("default", "none"):
            raise ConfigError(f"bad value {config.rules!r} for conv.rules; allowed values: default, none")
        return cls(forced=config.impl, table=load_table(config.table) if config.table else (),
                   rules=() if config.rules == "none" else RULES, xla_cpu=config.xla_cpu)


# jaxlib 0.10's XLA:CPU hands dots, convs and reductions to YNNPACK by default; its conv kernels measured
# 1.2-4.4x slower (forward + backward) than XLA's Eigen convs on all but one of jaxconv's model layers
# (docs/benchmarks.md). These options leave the dots and reductions to YNNPACK and the convs to Eigen.
_EIGEN_CONVS = (("xla_cpu_experimental_ynn_fusion_type",
                 "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"),)


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's XLA knows ``options`` (one without YNNPACK has no such option and no such
    convs: then no options are needed)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    except (jax.errors.JaxRuntimeError, ValueError):
        return False
    return True


def load_table(path: str) -> tuple[tuple[str, str], ...]:
    """An autotune table's winners (``jaxconv bench conv``'s ``conv_table.json``), sorted by key."""
    try:
        winners = json.loads(Path(path).read_text()).get("winners", {})
        if not isinstance(winners, dict):
            raise ValueError("'winners' is not an object")
        for impl in winners.values():
            parse_impl(impl)
    except FileNotFoundError:
        raise ConfigError(f"conv.table: {path} not found") from None
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"conv.table: {path} is not a conv table ({e})") from None
    return tuple(sorted(winners.items()))
