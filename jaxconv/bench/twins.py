"""Plain-PyTorch twins of jaxconv's presets: ``jaxconv bench train``'s ``vs_torch`` comparison.

Each twin is the network a user would write in PyTorch for the preset: the same layers, widths,
kernels, masks, dilations, gating, residuals and skips, built from the same model config as the jax
run (so ``--quick``'s shrunk configs shrink the twin too), trained with the same loss, optimizer
(``OptimConfig``: Adam / SGD with momentum, learning rate, betas, weight decay, gradient clipping) and
learning-rate schedule (``ScheduleConfig``) on the same uint8 batch. PyTorch's default initialisation:
speed does not depend on the weights.

- ``lenet5``: LeNet-5 as LeCun et al. 1998 (``jaxconv.models.lenet``): 1.7159 tanh(2a/3), S2/S4 2x2 sum
  pooling times a trainable coefficient plus a bias per map, C3 with only the 60 connected 5x5 kernels
  of Table I stored, a dense 84 -> 10 output; 60,850 parameters.
- ``lenet5_modern``: ReLU, 2x2 max pooling, full C3; 61,706.
- ``alexnet32``: AlexNet-32 (``jaxconv.models.alexnet``, variant cifar32): 'SAME' convs, overlapping 3x3/2
  pools, dropout 0.5 on fc6 and fc7, the ImageNet mean subtracted; 14,685,544 at full width.
- ``pixelcnn_mnist``: PixelCNN (``jaxconv.models.pixelcnn``): a kxk mask-A conv, residual blocks
  (ReLU, 1x1, ReLU, kxk mask B, ReLU, 1x1, + input), ReLU, 1x1, ReLU, 1x1; every conv masked
  (``MaskedConv2d``: rows above, the centre row left of centre, the centre tap by colour group).
- ``gated_pixelcnn_mnist``: Gated PixelCNN: a shifted (r+1) x k vertical conv and a 1 x (r+1) mask-A
  horizontal conv, then gated layers (vertical (r+1) x k conv -> 2F, tanh * sigmoid; horizontal
  1 x (r+1) mask-B conv -> 2F plus a 1x1 link from the vertical pre-activation, gate, 1x1 -> F,
  residual), the layers' 1x1 outputs summed as skips into ReLU, 1x1, ReLU, 1x1; dilations cycled.

Losses as jaxconv's tasks (``jaxconv.tasks``): classifiers, softmax cross-entropy (mean over the batch);
the PixelCNN family, each image's negative log-likelihood (binary cross-entropy with logits summed over
the image for the Bernoulli head, 256-way cross-entropy for softmax) divided by its dimensions, mean
over the batch (nats per dimension, the ``loss`` jaxconv logs). Inputs as jaxconv's: pixels / 255
(LeNet padded 28 -> 32, AlexNet minus the ImageNet mean / 255); binarised pixels (> 127) in {0, 1} for
the Bernoulli head, v / 255 * 2 - 1 for softmax.

``check_param_count`` compares a twin's trainable parameters with jaxconv's model for the same config
(``jaxconv.bench.models.param_count``) and raises ``TwinMismatchError`` if they differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from jaxconv.config import OptimConfig, ScheduleConfig
from jaxconv.errors import ConfigError
from jaxconv.models.alexnet import IMAGENET_MEAN_RGB, scaled_width
from jaxconv.models.lenet import C3_TABLE

TWINS = ("lenet5", "lenet5_modern", "alexnet32", "pixelcnn_mnist", "gated_pixelcnn_mnist")
BINARY_THRESHOLD = 127  # jaxconv.preprocess.binarise: pixel > 127 -> 1


class TwinMismatchError(RuntimeError):
    """A twin's parameter count differs from jaxconv's: the twin is not the same network (a bug)."""


@dataclasses.dataclass
class Twin:
    """The network and its loss on a uint8 batch: ``loss(images [B, C, H, W] uint8, labels [B] int64)``."""

    net: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def param_count(net: nn.Module) -> int:
    """Trainable parameters of a PyTorch network."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# LeNet-5 and AlexNet-32


def lecun_tanh(x: torch.Tensor) -> torch.Tensor:
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsample(nn.Module):
    """S2/S4: 2x2 sum pooling times a trainable per-map coefficient, plus a per-map bias."""

    def __init__(self, maps: int):
        super().__init__()
        self.coef = nn.Parameter(torch.ones(maps))
        self.bias = nn.Parameter(torch.zeros(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) * 4.0 * self.coef.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseC3(nn.Module):
    """C3: 5x5 kernels only for the (S2 map, C3 map) pairs of Table I, placed in a full kernel at use time."""

    def __init__(self):
        super().__init__()
        pairs = [(o, i) for o, ins in enumerate(C3_TABLE) for i in ins]
        self.register_buffer("outs", torch.tensor([o for o, _ in pairs]), persistent=False)
        self.register_buffer("ins", torch.tensor([i for _, i in pairs]), persistent=False)
        fan_in = torch.tensor([len(C3_TABLE[o]) * 25.0 for o, _ in pairs]).view(-1, 1, 1)
        self.weight = nn.Parameter((torch.rand(len(pairs), 5, 5) * 2 - 1) * 2.4 / fan_in)
        self.bias = nn.Parameter(torch.zeros(len(C3_TABLE)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight.new_zeros(len(C3_TABLE), 6, 5, 5).index_put((self.outs, self.ins), self.weight)
        return F.conv2d(x, kernel, self.bias)


def lenet5(model) -> nn.Module:
    """The faithful LeNet-5; the layers named as the paper (and jaxconv) name them."""
    squash = lambda: _Lambda(lecun_tanh)  # noqa: E731
    return nn.Sequential(OrderedDict(
        C1=nn.Conv2d(1, 6, 5), S2=Subsample(6), f2=squash(), C3=SparseC3(), S4=Subsample(16), f4=squash(),
        C5=nn.Conv2d(16, 120, 5), f5=squash(), flat=nn.Flatten(), F6=nn.Linear(120, 84), f6=squash(),
        output=nn.Linear(84, model.num_classes)))


def lenet5_modern(model) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, model.num_classes))


def alexnet32(model) -> nn.Module:
    """jaxconv.models.alexnet, variant cifar32: 'SAME' convs, overlapping 3x3/2 pools, dropout."""
    w = lambda c: scaled_width(c, model.width)  # noqa: E731
    c1, c2, c3, c4, c5, hidden = w(96), w(256), w(384), w(384), w(256), w(2048)
    pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, c1, 5, padding=2), nn.ReLU(), pool(), nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), pool(),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), pool(), nn.Flatten(),
        nn.Linear(9 * c5, hidden), nn.ReLU(), nn.Dropout(model.dropout), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Dropout(model.dropout), nn.Linear(hidden, model.num_classes))


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# ----------------------------------------------------------------------------------------------
# PixelCNN and Gated PixelCNN


def colour_groups(channels: int, colours: int, tiles: int = 1) -> torch.Tensor:
    """Colour group of each channel: ``tiles`` blocks of ``channels // tiles``, each split into ``colours``."""
    block = channels // tiles
    return (torch.arange(block) * colours // block).repeat(tiles)


def centre_mask(cin: int, cout: int, colours: int, mask_type: str, out_tiles: int = 1) -> torch.Tensor:
    """[Cout, Cin] 0/1: the input channels an output channel may see at its own position (A: earlier
    colour groups only, B: its own group too)."""
    gin, gout = colour_groups(cin, colours)[None, :], colour_groups(cout, colours, out_tiles)[:, None]
    return (gin < gout if mask_type == "A" else gin <= gout).float()


class MaskedConv2d(nn.Conv2d):
    """kxk 'same' convolution seeing the rows above, the centre row left of the centre, and at the
    centre the channels ``centre_mask`` allows."""

    def __init__(self, cin: int, cout: int, k: int, mask_type: str, colours: int = 1, dilation: int = 1):
        super().__init__(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
        r = k // 2
        mask = torch.zeros(cout, cin, k, k)
        mask[:, :, :r] = 1.0
        mask[:, :, r, :r] = 1.0
        mask[:, :, r, r] = centre_mask(cin, cout, colours, mask_type)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class HorizontalConv(nn.Conv2d):
    """Gated PixelCNN's horizontal stack: 1 x (r+1) over the row up to the pixel (padded d*r on the left);
    the last column carries the centre mask (A in the first layer, B after)."""

    def __init__(self, cin: int, cout: int, k: int, mask_type: str, colours: int = 1, dilation: int = 1,
                 out_tiles: int = 1):
        r = k // 2
        super().__init__(cin, cout, (1, r + 1), dilation=dilation)
        self.pad = dilation * r
        mask = torch.ones(cout, cin, 1, r + 1)
        mask[:, :, 0, r] = centre_mask(cin, cout, colours, mask_type, out_tiles)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, (self.pad, 0, 0, 0)), self.weight * self.mask, self.bias)


class VerticalConv(nn.Conv2d):
    """Gated PixelCNN's vertical stack: (r+1) x k over the rows up to the output row (padded d*r on top
    and each side). ``shifted`` (the first layer): padded r+1 on top and the last row dropped, so row i
    sees input rows i-1-r .. i-1 only."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1, shifted: bool = False):
        r = k // 2
        super().__init__(cin, cout, (r + 1, k), dilation=dilation)
        self.r, self.d, self.shifted = r, dilation, shifted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, r, h = self.d, self.r, x.shape[2]
        if self.shifted:
            x = F.pad(x, (r, r, r + 1, 0))[:, :, :h + r]
        else:
            x = F.pad(x, (d * r, d * r, d * r, 0))
        return super().forward(x)


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def cycle(values: tuple[int, ...], n: int) -> list[int]:
    return [values[i % len(values)] for i in range(n)]


class OutputHead(nn.Module):
    """ReLU -> 1x1 (features) -> ReLU -> 1x1 (the head's raw channels), both mask B."""

    def __init__(self, cin: int, features: int, out: int, colours: int):
        super().__init__()
        self.hidden = MaskedConv2d(cin, features, 1, "B", colours)
        self.logits = MaskedConv2d(features, out, 1, "B", colours)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.hidden(F.relu(x))))


class ResidualBlock(nn.Module):
    """2h -> ReLU -> 1x1 (h) -> ReLU -> kxk mask B (h) -> ReLU -> 1x1 (2h), + input."""

    def __init__(self, h: int, k: int, dilation: int, colours: int):
        super().__init__()
        self.reduce = MaskedConv2d(2 * h, h, 1, "B", colours)
        self.spatial = MaskedConv2d(h, h, k, "B", colours, dilation)
        self.expand = MaskedConv2d(h, 2 * h, 1, "B", colours)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.spatial(F.relu(self.reduce(F.relu(x))))))


class PixelCNN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.first = MaskedConv2d(c.channels, 2 * c.hidden, c.first_kernel, "A", c.colours)
        self.blocks = nn.Sequential(*[ResidualBlock(c.hidden, c.kernel, d, c.colours)
                                      for d in cycle(c.dilations, c.num_blocks)])
        self.head = OutputHead(2 * c.hidden, c.output_features, c.head_channels, c.colours)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.blocks(self.first(x)))


class GatedLayer(nn.Module):
    def __init__(self, f: int, k: int, dilation: int, colours: int, num_classes: int):
        super().__init__()
        self.vertical_conv = VerticalConv(f, 2 * f, k, dilation)
        self.horizontal_conv = HorizontalConv(f, 2 * f, k, "B", colours, dilation, out_tiles=2)
        self.link = nn.Conv2d(2 * f, 2 * f, 1)  # the vertical stack sees only rows above: no mask
        self.residual = MaskedConv2d(f, f, 1, "B", colours)
        self.class_bias = nn.Embedding(num_classes, 2 * f) if num_classes else None

    def forward(self, v, h, labels):
        cond = 0.0 if self.class_bias is None else self.class_bias(labels)[:, :, None, None]
        pre = self.vertical_conv(v)
        out = self.residual(gate(self.horizontal_conv(h) + self.link(pre) + cond))
        return gate(pre + cond), h + out, out


class GatedPixelCNN(nn.Module):
    def __init__(self, c):
        super().__init__()
        f = c.features
        self.vertical_first = VerticalConv(c.channels, f, c.kernel, shifted=True)
        self.horizontal_first = HorizontalConv(c.channels, f, c.kernel, "A", c.colours)
        self.layers = nn.ModuleList([GatedLayer(f, c.kernel, d, c.colours, c.num_classes)
                                     for d in cycle(c.dilations, c.num_layers)])
        self.head = OutputHead(f, c.output_features, c.head_channels, c.colours)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        v, h, skip = self.vertical_first(x), self.horizontal_first(x), 0.0
        for layer in self.layers:
            v, h, out = layer(v, h, labels)
            skip = skip + out
        return self.head(skip)


# ----------------------------------------------------------------------------------------------
# Twins: network + loss; the optimizer


def _classifier(net: nn.Module, prepare: Callable[[torch.Tensor], torch.Tensor]) -> Twin:
    return Twin(net, lambda images, labels: F.cross_entropy(net(prepare(images.float() / 255.0)), labels))


def _density(net: nn.Module, model) -> Twin:
    if model.head not in ("bernoulli", "softmax"):
        raise ConfigError(f"the PyTorch twin has no {model.head!r} head (bernoulli or softmax)")

    def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        cond = labels if model.num_classes else None
        if model.head == "bernoulli":
            target = (images > BINARY_THRESHOLD).float()  # [B, 1, H, W] in {0, 1}: input and target
            nats = F.binary_cross_entropy_with_logits(net(target, cond), target, reduction="none")
        else:
            logits = net(images.float() / 255.0 * 2.0 - 1.0, cond).view(b, c, 256, h, w).transpose(1, 2)
            nats = F.cross_entropy(logits, images.long(), reduction="none")  # [B, C, H, W]
        return (nats.sum(dim=(1, 2, 3)) / (c * h * w)).mean()  # per image NLL / dims, batch mean

    return Twin(net, loss)


def build(name: str, model) -> Twin:
    """The twin of preset ``name`` at model config ``model`` (the config the jax run uses)."""
    if name == "lenet5" and model.variant == "faithful":
        return _classifier(lenet5(model), lambda x: F.pad(x, (2, 2, 2, 2)) if x.shape[-1] == 28 else x)
    if name in ("lenet5", "lenet5_modern"):
        return _classifier(lenet5_modern(model), lambda x: F.pad(x, (2, 2, 2, 2)) if x.shape[-1] == 28 else x)
    if name == "alexnet32":
        mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1) / 255.0
        return _classifier(alexnet32(model), lambda x: x - mean.to(x.device))
    if name == "pixelcnn_mnist":
        return _density(PixelCNN(model), model)
    if name == "gated_pixelcnn_mnist":
        return _density(GatedPixelCNN(model), model)
    raise ConfigError(f"no PyTorch twin for {name!r}; twins: {', '.join(TWINS)}")


def twin_param_count(name: str, model) -> int:
    """The PyTorch twin's trainable parameter count for preset ``name`` at config ``model``."""
    return param_count(build(name, model).net)


def check_param_count(name: str, model) -> int:
    """The twin's parameter count; ``TwinMismatchError`` unless it equals jaxconv's for the same config."""
    from jaxconv.bench.models import param_count as jax_param_count

    ours, theirs = twin_param_count(name, model), jax_param_count(name, model)
    if ours != theirs:
        raise TwinMismatchError(f"the PyTorch twin of {name} has {ours:,} trainable parameters, jaxconv's model "
                                f"{theirs:,}: not the same network")
    return ours


def lr_factor(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """The schedule as a multiple of the peak learning rate (``jaxconv.train.state.make_schedule``)."""
    warmup = schedule.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        t = step - warmup
        if schedule.name == "cosine":
            span = max(1, total_steps - warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
            return schedule.final_factor + (1 - schedule.final_factor) * cosine
        if schedule.name == "step":
            return schedule.decay_factor ** sum(t >= b - warmup for b in schedule.boundaries)
        return 1.0

    return factor


def optimizer(params, optim: OptimConfig, schedule: ScheduleConfig, total_steps: int) -> tuple[Any, Any]:
    """(torch optimizer, LambdaLR scheduler or None) as ``jaxconv.train.state.make_optimizer``; gradient
    clipping (``optim.grad_clip_norm``) is the caller's ``clip_grad_norm_``."""
    params = list(params)
    if optim.name == "adamw":
        opt = torch.optim.AdamW(params, optim.learning_rate, (optim.b1, optim.b2), optim.eps, optim.weight_decay)
    elif optim.name == "adam":
        opt = torch.optim.Adam(params, optim.learning_rate, (optim.b1, optim.b2), optim.eps, optim.weight_decay)
    elif optim.name == "momentum":
        opt = torch.optim.SGD(params, optim.learning_rate, momentum=optim.momentum, nesterov=optim.nesterov,
                              weight_decay=optim.weight_decay)
    else:
        opt = torch.optim.SGD(params, optim.learning_rate, weight_decay=optim.weight_decay)
    if schedule.name == "constant" and not schedule.warmup_steps:
        return opt, None
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, total_steps))
