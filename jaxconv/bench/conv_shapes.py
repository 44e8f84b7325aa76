"""What ``jaxconv bench conv`` measures: conv layer shapes, the sets they come in, the modes and dtypes.

A ``ConvShape`` is a layer's ``ConvGeometry`` (``jaxconv.models.conv_policy``, the type the policy's
``Signature`` extends with batch size, dtype and backend) plus what the bench reports: a name, the layers
that use it, its mask, and whether training computes its input gradient.

Shapes (``shape_sets``): the layers of jaxconv's presets, found by tracing them
(``jaxconv.bench.models``; LeNet-5 faithful and modern, PixelCNN and Gated PixelCNN, MNIST, CIFAR and
ImageNet32 sizes, 1x1 layers included; AlexNet-32), the kxk masked layers of PixelCNN (compared in their
masked and cropped forms), the paper AlexNet's layers as data (``ALEXNET_224``), and user shapes
(``--shape N,H,W,Cin,Cout,K,stride,dil[,groups]``, padded by dil*(K-1)//2 each side). Identical
shapes are measured once and list every layer that uses them.

Modes: ``forward``; ``forward_backward``: the output, then the kernel gradient and the input gradient,
except for layers fed by the image (``input_grad=False``: LeNet C1, AlexNet conv1, the PixelCNN first
layers), whose input gradient training never computes; opt-in (``--modes``), ``input_grad`` and
``kernel_grad``: one backward pass alone, for per-pass autotuning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxconv.bench.models import masked_layers, preset_image, traced_convs
from jaxconv.errors import ConfigError
from jaxconv.models.conv_policy import ConvGeometry

MODES = ("forward", "forward_backward")  # the default sweep
PASS_MODES = ("input_grad", "kernel_grad")  # opt-in: one backward pass alone (per-pass autotuning)
ALL_MODES = MODES + PASS_MODES
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvShape(ConvGeometry):
    """One conv layer as the bench measures it (without its batch size); the input is NHWC [B, height, width, cin]."""

    name: str
    mask: str | None = None  # "A"/"B": a MaskedConv2D (k x k, padding applied to the input already)
    colours: int = 1
    sources: tuple[str, ...] = ()
    input_grad: bool = True  # False for layers fed by the image: training never needs their input gradient

    @property
    def kind(self) -> str:
        return "masked" if self.mask else "conv"

    def forward_flops(self, batch: int) -> float:
        ho, wo = self.out_hw()
        return 2.0 * batch * ho * wo * self.cout * (self.cin // self.groups) * self.kh * self.kw

    def outputs(self, mode: str) -> list[str]:
        """What a mode computes: "y" (output), "x" (input gradient), "w" (kernel gradient)."""
        return {"forward": ["y"], "forward_backward": ["x", "w"] if self.input_grad else ["w"],
                "input_grad": ["x"], "kernel_grad": ["w"]}[mode]

    def passes(self, mode: str) -> int:
        """Conv passes a mode runs: forward_backward runs the forward and one per gradient."""
        return 1 + len(self.outputs(mode)) if mode == "forward_backward" else 1

    def mode_flops(self, batch: int, mode: str) -> float:
        """Forward FLOPs once per pass computed (a gradient pass costs what the forward does)."""
        return self.passes(mode) * self.forward_flops(batch)

    def mode_bytes(self, batch: int, mode: str) -> float:
        """Minimum traffic in elements: each pass reads two of x, w, y (or dy) and writes the third."""
        return self.passes(mode) * sum(self.sizes(batch))

    def sizes(self, batch: int) -> tuple[int, int, int]:
        """Elements of x, w, y."""
        ho, wo = self.out_hw()
        return (batch * self.height * self.width * self.cin, self.kh * self.kw * (self.cin // self.groups) * self.cout,
                batch * ho * wo * self.cout)


def layer_fields(layer: ConvGeometry) -> dict[str, Any]:
    """A layer's geometry as a result row's JSON fields (height ... groups; tuples as lists)."""
    lists = lambda v: [lists(x) for x in v] if isinstance(v, tuple) else v
    return {f.name: lists(getattr(layer, f.name)) for f in dataclasses.fields(ConvGeometry)}


def row_layer(row: dict) -> ConvGeometry:
    """The geometry a result row's fields describe (``layer_fields`` undone)."""
    tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v
    return ConvGeometry(**{f.name: tuples(row[f.name]) for f in dataclasses.fields(ConvGeometry)})


def _same(k: int, d: int) -> tuple[int, int]:
    return (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)


def _alexnet(prefix: str, layers) -> list[ConvShape]:
    return [ConvShape(height=h, width=h, cin=cin, cout=cout, kh=k, kw=k, stride=(s, s), padding=((p, p), (p, p)),
                      groups=g, name=f"{prefix}:{name}", sources=(f"{prefix}:{name}",), input_grad=name != "conv1")
            for name, h, cin, cout, k, s, p, g in layers]


# Krizhevsky et al. 2012: 227x227 input (the 224 of the paper's text plus the padding its numbers imply);
# conv2, conv4, conv5 split over two GPUs = two feature groups.
ALEXNET_224 = _alexnet("alexnet224", [
    ("conv1", 227, 3, 96, 11, 4, 0, 1), ("conv2", 27, 96, 256, 5, 1, 2, 2), ("conv3", 13, 256, 384, 3, 1, 1, 1),
    ("conv4", 13, 384, 384, 3, 1, 1, 2), ("conv5", 13, 384, 256, 3, 1, 1, 2)])
# Shape sets: presets traced, or data; batch sizes (CPU, accelerator).
SETS: dict[str, dict] = {
    "lenet": {"presets": ("lenet5", "lenet5_modern"), "batches": ((64, 256), (256, 1024))},
    "alexnet224": {"shapes": ALEXNET_224, "batches": ((8,), (128,))},
    "alexnet32": {"presets": ("alexnet32",), "batches": ((32,), (256,))},
    "pixelcnn_mnist": {"presets": ("pixelcnn_mnist", "gated_pixelcnn_mnist"), "batches": ((64,), (64, 256))},
    "pixelcnn_cifar": {"presets": ("gated_pixelcnn_cifar",), "batches": ((16,), (64,))},
    "pixelcnn_paper": {"presets": ("pixelcnn_cifar", "gated_pixelcnn_imagenet32"), "batches": ((2,), (64,))},
}

# --quick: tiny shapes covering every code path at the fewest compilations: (shape, batches, dtypes, modes).
QUICK_CASES = [
    (ConvShape(height=9, width=9, cin=4, cout=8, kh=3, kw=3, stride=(2, 2), padding=((1, 1), (1, 1)), groups=2,
               name="quick:strided-grouped", sources=("quick",)), (2,), DTYPES, ("forward_backward",)),
    (ConvShape(height=8, width=8, cin=6, cout=6, kh=3, kw=3, name="quick:masked-B-rgb", mask="B", colours=3,
               sources=("quick",)), (2,), ("float32",), MODES),
    (ConvShape(height=12, width=12, cin=1, cout=4, kh=5, kw=5, name="quick:5x5-first", sources=("quick",),
               input_grad=False), (2,), ("float32",), ("forward_backward",)),
]


def parse_shape(text: str) -> tuple[ConvShape, int]:
    """``N,H,W,Cin,Cout,K,stride,dil[,groups]`` -> (shape, batch). Padding: dil*(K-1)//2 each side."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (8, 9) or min(values) < 1:
        raise ConfigError(f"--shape {text!r}: expected N,H,W,Cin,Cout,K,stride,dil[,groups] (positive ints)")
    n, h, w, cin, cout, k, s, d, *rest = values
    g = rest[0] if rest else 1
    if cin % g or cout % g:
        raise ConfigError(f"--shape {text!r}: groups={g} must divide Cin and Cout")
    pad = _same(k, d)
    name = f"user:{n},{h},{w},{cin},{cout},{k},{s},{d}" + (f",{g}" if g > 1 else "")
    shape = ConvShape(height=h, width=w, cin=cin, cout=cout, kh=k, kw=k, stride=(s, s), dilation=(d, d),
                      padding=(pad, pad), groups=g, name=name, sources=("user",))
    if min(shape.out_hw()) < 1:
        raise ConfigError(f"--shape {text!r}: the kernel does not fit the input")
    return shape, n


def _short_name(prefix: str, s: ConvShape) -> str:
    extra = "".join([f"/s{s.stride[0]}" if s.stride != (1, 1) else "", f"/d{s.dilation[0]}" if s.dilation != (1, 1) else "",
                     f"/g{s.groups}" if s.groups > 1 else "", f" mask {s.mask}" if s.mask else ""])
    return f"{prefix}:{s.height}x{s.width}x{s.cin}->{s.cout} {s.kh}x{s.kw}{extra}"


def _preset_shapes(prefix: str, presets) -> list[ConvShape]:
    """The presets' conv layers, one per geometry. A layer whose input channels are the image's is taken to
    be fed by the image (true of every jaxconv model): no input gradient unless another layer shares it."""
    merged: dict[ConvGeometry, ConvShape] = {}
    for preset in presets:
        channels = preset_image(preset)[2]
        for layer in masked_layers(preset):
            s = ConvShape(height=layer["height"], width=layer["width"], cin=layer["cin"], cout=layer["cout"],
                          kh=layer["k"], kw=layer["k"], dilation=(layer["dilation"],) * 2, name="",
                          mask=layer["mask"], colours=layer["colours"], input_grad=layer["mask"] != "A")
            key = s.geometry()
            old = merged.get(key)
            merged[key] = dataclasses.replace(s, sources=(old.sources if old else ()) + (layer["path"],),
                                              input_grad=s.input_grad or bool(old and old.input_grad))
        for path, c in traced_convs(preset):
            s = ConvShape(**vars(c.geometry()), name="", input_grad=c.cin != channels)
            key = s.geometry()
            source = f"{preset}:{path.split('/', 1)[-1]}"
            old = merged.get(key, s)
            if source not in old.sources and not (old.mask and any(x.startswith(preset) for x in old.sources)):
                old = dataclasses.replace(old, sources=old.sources + (source,))
            if not old.mask:
                old = dataclasses.replace(old, input_grad=old.input_grad or s.input_grad)
            merged[key] = old
    return [dataclasses.replace(s, name=_short_name(prefix, s)) for s in merged.values()]


def shape_sets(names: list[str] | None = None, accelerator: bool = False) -> list[tuple[ConvShape, tuple[int, ...]]]:
    """(shape, batch sizes) for the named sets (default: all), model order."""
    names = list(SETS) if names is None else names
    out = []
    for name in names:
        if name not in SETS:
            raise ConfigError(f"unknown shape set {name!r}; sets: {', '.join(SETS)}")
        spec = SETS[name]
        shapes = spec["shapes"] if "shapes" in spec else _preset_shapes(name, spec["presets"])
        batches = spec["batches"][1 if accelerator else 0]
        out += [(s, batches) for s in shapes]
    return out
