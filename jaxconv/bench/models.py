"""What the benchmarks learn from jaxconv's models by tracing them: conv layer shapes and forward FLOPs.

``traced_convs(preset)`` traces a preset's forward pass (``jax.make_jaxpr`` on abstract parameters,
so even the 122M-parameter preset costs nothing) and returns every ``conv_general_dilated`` in it with
its module path, as a ``jaxconv.models.conv_policy.Signature``: the exact layer shapes the model runs,
padding included. ``forward_flops(preset)`` sums 2 * MACs over its convolutions (the taps their masks
keep) and matmuls (elementwise work is not counted): the model FLOPs of MFU are 3x that per training image.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxconv.models import PRESETS, build_model, pixelcnn
from jaxconv.models.conv_policy import ConvPolicy, Signature, signature

# Input image of each preset (H, W, C); presets not listed: 28x28 for one channel, 32x32 for three.
PRESET_IMAGES: dict[str, tuple[int, int, int]] = {
    "lenet5": (28, 28, 1), "lenet5_modern": (28, 28, 1),
    "pixelcnn_mnist": (28, 28, 1), "gated_pixelcnn_mnist": (28, 28, 1),
    "pixelcnn_cifar": (32, 32, 3), "gated_pixelcnn_cifar": (32, 32, 3), "gated_pixelcnn_imagenet32": (32, 32, 3),
    "alexnet": (224, 224, 3), "alexnet_single": (224, 224, 3), "alexnet32": (32, 32, 3), "alexnet32_cifar10": (32, 32, 3),
}


def preset_image(name: str, config: Any = None) -> tuple[int, int, int]:
    if name in PRESET_IMAGES:
        return PRESET_IMAGES[name]
    channels = getattr(config if config is not None else PRESETS[name], "channels", 1)
    return (28, 28, 1) if channels == 1 else (32, 32, channels)


def _closed_sub_jaxprs(eqn) -> Iterator[tuple[Any, dict]]:
    """An eqn's sub-jaxprs, each with its own constants (a ``ClosedJaxpr``'s)."""
    for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(sub, "eqns"):
                yield sub, {}
            elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                yield sub.jaxpr, dict(zip(sub.jaxpr.constvars, getattr(sub, "consts", ())))


def _named_eqns(jaxpr, outer: str = "") -> Iterator[tuple[Any, str]]:
    """Each eqn with its module path: a sub-jaxpr's names continue its eqn's (a conv inside a custom_vjp has none
    of its own)."""
    for eqn in jaxpr.eqns:
        name = "/".join(part for part in (outer, str(eqn.source_info.name_stack)) if part)
        yield eqn, name
        for sub, _ in _closed_sub_jaxprs(eqn):
            yield from _named_eqns(sub, name)


def _var_in(value, masks: dict) -> bool:
    return isinstance(value, jcore.Var) and value in masks


# The models' convs as conv ops in the trace, whichever implementation a rule would pick.
AS_CONV_OPS = ConvPolicy(forced="xla")


def _jaxpr(model, image: tuple[int, int, int], batch: int = 1):
    x = jnp.zeros((1, *image), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    spec = jax.ShapeDtypeStruct((batch, *image), jnp.float32)
    return jax.make_jaxpr(lambda p, v: model.apply(p, v))(params, spec)


def _conv_of(eqn, path: str) -> tuple[str, Signature] | None:
    p = eqn.params
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    dn = p["dimension_numbers"]
    if len(lhs) != 4 or any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        return None
    ls, rs = dn.lhs_spec, dn.rhs_spec
    x_nhwc = (lhs[ls[0]], lhs[ls[2]], lhs[ls[3]], lhs[ls[1]])
    kernel_hwio = (rhs[rs[2]], rhs[rs[3]], rhs[rs[1]], rhs[rs[0]])
    return path, signature(
        x_nhwc, kernel_hwio, eqn.invars[0].aval.dtype, tuple(p["window_strides"]),
        tuple(tuple(q) for q in p["padding"]), tuple(p["rhs_dilation"]), p["feature_group_count"])


def traced_convs(name: str, config: Any = None) -> list[tuple[str, Signature]]:
    """Every convolution of the preset's forward pass, in order: (module path, its layer signature)."""
    config = PRESETS[name] if config is None else config
    jaxpr = _jaxpr(build_model(config, policy=AS_CONV_OPS), preset_image(name, config)).jaxpr
    return [c for e, path in _named_eqns(jaxpr)
            if e.primitive.name == "conv_general_dilated" and (c := _conv_of(e, path))]


def jaxpr_flops(jaxpr) -> float:
    """2 * multiply-adds of the convolutions and matmuls of a jaxpr (sub-jaxprs included).

    Given a ``ClosedJaxpr`` (``jax.make_jaxpr``'s result), a conv whose kernel is the product with a constant
    mask counts only the taps the mask keeps (a tap counts whole if any of its channels is kept): the masked
    convs of ``jaxconv.models.masked`` run r zero taps per layer, which are not the model's FLOPs.
    """
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return _flops(jaxpr.jaxpr, dict(zip(jaxpr.jaxpr.constvars, jaxpr.consts)), {})
    return _flops(jaxpr, {}, {})


def _flops(jaxpr, consts: dict, masks: dict) -> float:
    """``jaxpr_flops`` of one jaxpr; ``masks``: its values known to be products with a constant mask (a call's
    inputs, from its caller's), extended here through products with ``consts``, literals and dtype casts."""
    masks, total = dict(masks), 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "mul":
            for operand in eqn.invars:
                value = operand.val if isinstance(operand, jcore.Literal) else consts.get(operand)
                if value is not None and np.ndim(value) == 4:
                    masks[eqn.outvars[0]] = np.asarray(value)
        elif name == "convert_element_type" and _var_in(eqn.invars[0], masks):
            masks[eqn.outvars[0]] = masks[eqn.invars[0]]
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rs = eqn.params["dimension_numbers"].rhs_spec
            mask = masks.get(eqn.invars[1]) if _var_in(eqn.invars[1], masks) else None
            taps = rhs[rs[2]] * rhs[rs[3]] if mask is None else int(np.any(mask != 0, axis=(2, 3)).sum())
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * rhs[rs[1]] * taps
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
        for sub, sub_consts in _closed_sub_jaxprs(eqn):
            # A call whose inputs are its eqn's (custom_vjp, pjit) carries the caller's masks in; each call its
            # own (one traced function called twice shares its sub-jaxpr).
            inner = {i: masks[o] for i, o in zip(sub.invars, eqn.invars) if _var_in(o, masks)} \
                if len(sub.invars) == len(eqn.invars) else {}
            total += _flops(sub, {**consts, **sub_consts}, inner)
    return total


def forward_flops(name: str, config: Any = None) -> float:
    """Forward FLOPs per image of a preset (convs and matmuls)."""
    config = PRESETS[name] if config is None else config
    return forward_flops_of(config, preset_image(name, config))


def forward_flops_of(config: Any, image: tuple[int, int, int]) -> float:
    """Forward FLOPs per image of ``config``'s model on ``image`` (H, W, C) inputs, every conv counted as a conv op
    whichever implementation runs it (an FFI call is not one)."""
    return jaxpr_flops(_jaxpr(build_model(config, policy=AS_CONV_OPS), image))


def param_count(name: str, config: Any = None) -> int:
    config = PRESETS[name] if config is None else config
    model = build_model(config)
    x = jnp.zeros((1, *preset_image(name, config)), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def masked_layers(name: str, config: Any = None) -> list[dict]:
    """The kxk masked convolutions (``MaskedConv2D``) of a pixelcnn-family preset, as convs on the padded input.

    Each: {path, height, width (padded), cin, cout, k, dilation, mask, colours}. Gated PixelCNN has none:
    its stacks' kernels are stored cropped already.
    """
    config = PRESETS[name] if config is None else config
    if not isinstance(config, pixelcnn.PixelCNNConfig):
        return []
    h, w, c = preset_image(name, config)
    p0 = config.first_kernel // 2
    layers = [dict(path=f"{name}/first", height=h + 2 * p0, width=w + 2 * p0, cin=c, cout=2 * config.hidden,
                   k=config.first_kernel, dilation=1, mask="A", colours=config.colours)]
    for d in sorted(set(pixelcnn.layer_dilations(config))):
        p = d * (config.kernel // 2)
        layers.append(dict(path=f"{name}/blocks.spatial", height=h + 2 * p, width=w + 2 * p, cin=config.hidden,
                           cout=config.hidden, k=config.kernel, dilation=d, mask="B", colours=config.colours))
    return layers


def random_params(model, image: tuple[int, int, int], seed: int = 0) -> Any:
    """Parameters of ``model``'s shapes drawn with numpy (kernels N(0, 1/fan_in), vectors 0).

    For speed measurements only: no XLA compilation of ``model.init`` (seconds on a CPU).
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image), jnp.float32)))["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        if len(s.shape) < 2:
            return jnp.zeros(s.shape, s.dtype)
        fan_in = math.prod(s.shape[:-1])
        return jnp.asarray(rng.standard_normal(s.shape, np.float32) / math.sqrt(fan_in), s.dtype)

    return jax.tree.map(draw, shapes)
