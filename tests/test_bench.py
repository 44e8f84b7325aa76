"""The benchmark suite: every command runs end to end at --quick sizes with its agreement checks on,
result files validate against the schema, the agreement check catches a wrong implementation, and
jaxconv's conv implementations (and the layers using them) match XLA's convolution.
Timing numbers are never asserted."""

import copy
import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from jaxconv import bench
from jaxconv.bench import conv as conv_bench
from jaxconv.bench import conv_runners, conv_shapes, device
from jaxconv.bench import report, results
from jaxconv.bench import sample as bench_sample
from jaxconv.bench.models import forward_flops, jaxpr_flops, random_params, traced_convs
from jaxconv.errors import ConfigError
from jaxconv.config import ConvConfig
from jaxconv.models import build_model, conv as conv_lib, conv_impls, preset
from jaxconv.models.conv_policy import ConvPolicy, Rule, signature
from jaxconv.models.lenet import LeNetConfig

# (x shape, kernel shape, strides, padding, dilation, groups): stride, dilation + groups, odd padding and kernel,
# and groups with a stride on an input big enough (>= materialize.MIN_ELEMENTS) to be kept for the kernel
# gradient; "channel-tails": 20 input channels (16 + 4) and 35 output channels (2 x 16 + 3), the native
# kernel gradient's full and partial tiles; "one-channel-padded": one input channel, whose native kernel
# gradient takes a row's taps as the tile's channels where all are inside the padded image; "one-channel-wide":
# a kernel wider than the image, no column where all of a row's taps are inside; "negative-bottom" and
# "one-channel-negative": the padding of Gated PixelCNN's first vertical conv (``VerticalConv``, shifted), which
# crops the input's last row. Small kernels: each
# implementation's code is the same for any size, and they compile fast.
CASES = [
    ((2, 13, 13, 3), (3, 3, 3, 8), 2, ((0, 0), (0, 0)), 1, 1),
    ((3, 9, 10, 20), (3, 2, 20, 35), (2, 1), ((1, 2), (0, 1)), (1, 2), 1),
    ((2, 11, 12, 1), (3, 5, 1, 18), (1, 2), ((2, 1), (2, 3)), (2, 1), 1),
    ((1, 5, 4, 1), (2, 7, 1, 3), 1, ((0, 0), (3, 3)), 1, 1),
    ((2, 12, 12, 6), (3, 3, 3, 4), 1, ((2, 2), (2, 2)), 2, 2),
    ((1, 12, 13, 4), (2, 3, 4, 4), (1, 2), ((2, 0), (1, 1)), (2, 1), 1),
    ((2, 64, 64, 4), (3, 3, 2, 6), 2, ((1, 1), (1, 1)), 1, 2),
    ((2, 9, 8, 5), (1, 3, 5, 6), 1, ((2, -2), (2, 2)), 2, 1),
    ((2, 10, 9, 1), (3, 7, 1, 6), 1, ((3, -1), (3, 3)), 1, 1),
    # stride 1 (the native input gradient): input channels, columns and rows beyond one of its blocks
    ((2, 7, 19, 11), (2, 3, 11, 21), 1, ((1, 0), (-1, 2)), (2, 1), 1),
    # strided windows that never read the last row and column: their input gradient must be zero
    ((2, 10, 10, 4), (3, 3, 4, 8), 2, ((0, 0), (0, 0)), 1, 1),
]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """``jaxconv bench all --quick`` in this process (8 fake devices): the three result sets."""
    out = tmp_path_factory.mktemp("bench")
    lines = []
    written = bench.run(bench.Options("all", quick=True, out=out, command="jaxconv bench all --quick"), log=lines.append)
    return out, written, lines


@pytest.mark.parametrize("case", CASES, ids=["strided", "channel-tails", "one-channel-padded", "one-channel-wide",
                                             "dilated-grouped", "asymmetric", "grouped-strided-kept",
                                             "negative-bottom", "one-channel-negative", "stride-1-blocks",
                                             "strided-unread-edge"])
def test_conv_implementations_match_xla(case):
    xs, ks, strides, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    k = jnp.asarray(rng.standard_normal(ks) / np.sqrt(np.prod(ks[:3])), jnp.float32)

    impls = [*conv_impls.IMPLEMENTATIONS, "taps/fft/im2col"]  # a per-pass triple: a custom_vjp

    @jax.jit
    def value_and_grads(x, k):
        outs = []
        for impl in impls:
            f = lambda x, k: conv_lib.conv(x, k, strides, padding, dilation, groups, impl=impl)
            y, vjp = jax.vjp(f, x, k)
            outs.append((y, *vjp(jnp.cos(y))))
        return outs

    outs = value_and_grads(x, k)
    ref = outs[0]
    expected = jax.lax.conv_general_dilated(x, k, conv_impls.pair(strides), padding, rhs_dilation=conv_impls.pair(dilation),
                                            feature_group_count=groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(ref[0], expected)
    for impl, out in zip(impls, outs):
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a, b, atol=2e-4 * float(jnp.max(jnp.abs(b))), err_msg=impl)


def test_xla_convs_with_a_cropped_low_side_are_right_both_ways():
    """Padding negative on the low side and positive on the high side: XLA:CPU's own conv (and the convs
    of its gradients) read memory outside the input (values up to 1e35) on such padding, so ``conv_xla``
    crops that side itself. Checked against the input padded by ``lax.pad`` and a VALID conv: the value,
    and reverse mode (the train step's) against that reference's forward mode."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 9, 7, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 2, 2, 3)), jnp.float32)
    for padding in (((-1, 1), (0, 0)), ((-2, 2), (-1, 1)), ((0, 0), (-1, 2))):
        loss = lambda x, k: jnp.sum(jnp.sin(conv_lib.conv(x, k, 1, padding, 1, 1, impl="xla")))
        pads = ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
        valid = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
            jax.lax.pad(x, 0.0, pads), k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        want = valid(x, k)
        np.testing.assert_allclose(conv_lib.conv(x, k, 1, padding, 1, 1, impl="xla"), want,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))), err_msg=str(padding))
        reverse = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
        forward = jax.jacfwd(lambda x, k: jnp.sum(jnp.sin(valid(x, k))), argnums=(0, 1))(x, k)
        for a, b in zip(reverse, forward):
            np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.max(jnp.abs(b))), err_msg=str(padding))


def primitives(jaxpr) -> set[str]:
    """Every primitive of a jaxpr, nested ones (custom_vjp, pjit) included."""
    found = set()
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= primitives(inner)
    return found


def test_layers_use_the_chosen_conv_and_match():
    # LeNet's Conv is a drop-in for nn.Conv: same parameters; the same outputs through XLA's conv, and to
    # float rounding through the default policy's (a single-input-channel layer goes to oneDNN, whose sums
    # round differently on some CPUs: AVX2 against AVX-512).
    x = jax.random.uniform(jax.random.key(1), (2, 12, 12, 1))
    for kwargs in ({"padding": "VALID"}, {"padding": ((1, 1), (2, 0)), "strides": 2}):
        a, b = nn.Conv(6, (5, 5), **kwargs), conv_lib.Conv(6, (5, 5), **kwargs)
        params = a.init(jax.random.key(0), x)
        assert jax.tree.structure(params) == jax.tree.structure(b.init(jax.random.key(0), x))
        xla = conv_lib.Conv(6, (5, 5), **kwargs, policy=ConvPolicy(forced="xla"))
        np.testing.assert_array_equal(a.apply(params, x), xla.apply(params, x))
        np.testing.assert_allclose(b.apply(params, x), a.apply(params, x), rtol=1e-5, atol=1e-6)
    # Forcing each implementation through the models' policy: LeNet faithful (C1, sparse C3, C5) and a
    # small PixelCNN (masked 3x3 mask A and B layers in both forms).
    small = dataclasses.replace(preset("pixelcnn_mnist"), hidden=4, num_blocks=1, first_kernel=3, output_features=4)
    configs = [(LeNetConfig(variant="faithful"), (2, 28, 28, 1)), (small, (2, 8, 8, 1)),
               (dataclasses.replace(small, conv_form="cropped"), (2, 8, 8, 1))]
    for (config, shape), impl in zip(configs, ("fft", "taps", "im2col")):
        model = build_model(config)
        params = {"params": random_params(model, shape[1:])}
        inp = (jax.random.uniform(jax.random.key(2), shape) > 0.5).astype(jnp.float32)
        ref = jax.jit(model.apply)(params, inp)
        forced = build_model(config, policy=ConvPolicy(forced=impl))
        ops = primitives(jax.make_jaxpr(forced.apply)(params, inp).jaxpr)
        # The policy reached every layer: neither XLA's conv nor a C++ one (the rules' oneDNN and native convs).
        assert not {"conv_general_dilated", "ffi_call"} & ops, (impl, ops)
        out = jax.jit(forced.apply)(params, inp)
        np.testing.assert_allclose(out, ref, atol=1e-4 * float(jnp.max(jnp.abs(ref))) + 1e-5, err_msg=impl)
    with pytest.raises(ConfigError, match="conv.impl"):
        ConvPolicy.from_config(ConvConfig(impl="nonsense"))


def test_the_conv_policy_is_data_recorded_in_the_run(tmp_path):
    """The environment variable reaches the config at the command line, config.json records it, and a
    bad one is a one-line config error; nothing below the CLI reads the environment to choose a conv."""
    import os

    env = dict(os.environ, JAXCONV_CONV_IMPL="im2col", JAXCONV_CONV_XLA_CPU="ynnpack")
    done = run_cli("train", "lenet_modern_mnist", "--smoke", "--set", "train.steps=2", "--set", "parallel.num_devices=1",
                   "--workdir", str(tmp_path / "run"), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["conv"] == {
        "impl": "im2col", "table": "", "rules": "default", "autotune": False, "xla_cpu": "ynnpack"}
    done = run_cli("train", "lenet_modern_mnist", "--smoke", "--workdir", str(tmp_path / "bad"),
                   env=dict(os.environ, JAXCONV_CONV_XLA_CPU="onednn"))
    assert done.returncode == ConfigError.exit_code and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("jaxconv: error: bad value 'onednn' for conv.xla_cpu; allowed values: eigen, ynnpack")
    done = run_cli("train", "lenet_modern_mnist", "--smoke", "--workdir", str(tmp_path / "bad"),
                   env=dict(os.environ, JAXCONV_CONV_IMPL="bogus"))
    assert done.returncode == ConfigError.exit_code and done.stderr.count("\n") == 1
    assert done.stderr.startswith("jaxconv: error: conv.impl: conv implementation 'bogus'")
    from pathlib import Path

    library = Path(conv_lib.__file__).parent
    readers = [p.name for p in library.glob("*.py") if "os.environ" in p.read_text()]
    assert readers == []


def test_choice_rules_and_autotune_table(tmp_path):
    policy = ConvPolicy()
    sig = signature((8, 32, 32, 1), (5, 5, 1, 6), jnp.float32, backend="cpu")
    # a first layer with a full 5x5 kernel: oneDNN at every batch size
    assert policy.choose(sig) == "onednn"
    rules = (Rule("taps", backend="gpu"), Rule("im2col", backend="cpu", cin=(1, 3), taps=(25, 121)))
    assert ConvPolicy(rules=rules).choose(sig) == "im2col"
    assert ConvPolicy(rules=(Rule("fft"),)).choose(sig) == "fft"
    bf16 = signature((8, 32, 32, 1), (5, 5, 1, 6), jnp.bfloat16, backend="cpu")
    assert ConvPolicy(rules=(Rule("fft"),)).choose(bf16) == "xla"  # fft has no bfloat16: falls back
    table = tmp_path / "conv_table.json"
    table.write_text(json.dumps({"winners": {sig.key(): "taps"}}))
    tabled = ConvPolicy.from_config(ConvConfig(table=str(table)))  # the file is read here, once
    table.unlink()
    assert tabled.choose(sig) == "taps"
    assert tabled.choose(bf16) == "xla"
    assert ConvPolicy(forced="im2col", table=tabled.table).choose(sig) == "im2col"  # forced wins over the table
    grouped = signature((8, 13, 13, 384), (3, 3, 192, 256), jnp.float32, groups=2, backend="cpu")
    one_by_one = signature((8, 28, 28, 64), (1, 1, 64, 32), jnp.float32, backend="cpu")
    to_one = signature((8, 28, 28, 64), (1, 1, 64, 1), jnp.float32, backend="cpu")
    first = signature((64, 32, 32, 1), (5, 5, 1, 6), jnp.float32, backend="cpu")
    few = signature((64, 14, 14, 6), (5, 5, 6, 16), jnp.float32, backend="cpu")
    few_big_batch = signature((256, 14, 14, 6), (5, 5, 6, 16), jnp.float32, backend="cpu")
    wide = signature((64, 29, 30, 32), (2, 3, 32, 64), jnp.float32, backend="cpu")
    strided = signature((8, 227, 227, 3), (11, 11, 3, 96), jnp.float32, strides=4, backend="cpu")
    choices = ["onednn", "xla/xla/native", "xla/xla/taps", "onednn", "onednn/native/native",
               "onednn/native/native", "xla/xla/native", "onednn"]
    assert [policy.choose(s) for s in (grouped, one_by_one, to_one, first, few, few_big_batch, wide, strided)] == choices
    # 128 channels or more: oneDNN whatever the kernel size, but not dilated (its dilated kernel gradient is slow)
    very_wide = signature((16, 32, 32, 256), (1, 1, 256, 1024), jnp.float32, backend="cpu")
    very_wide_dilated = signature((16, 32, 32, 128), (2, 3, 128, 128), jnp.float32, dilation=2, backend="cpu")
    assert [policy.choose(s) for s in (very_wide, very_wide_dilated)] == ["onednn", "xla/xla/native"]
    # PixelCNN MNIST's head 1x1 32->64 and its masked 2x3 16->16
    head = signature((64, 28, 28, 32), (1, 1, 32, 64), jnp.float32, backend="cpu")
    masked = signature((64, 28, 28, 16), (2, 3, 16, 16), jnp.float32, padding=((1, 0), (1, 1)), backend="cpu")
    grouped_small = signature((64, 28, 28, 32), (3, 3, 16, 32), jnp.float32, padding=((1, 1), (1, 1)), groups=2,
                              backend="cpu")  # the native kernel gradient has no groups: split's
    assert [policy.choose(s) for s in (head, masked, grouped_small)] == ["onednn", "onednn/onednn/native", "split"]
    in_bf16 = [dataclasses.replace(s, dtype="bfloat16") for s in (one_by_one, first, few, few_big_batch)]
    # native and onednn: float32 only; a grouped conv in bfloat16 by groups
    assert [policy.choose(s) for s in in_bf16] == ["xla", "taps/im2col/xla", "xla/im2col/xla", "xla/taps/xla"]
    assert policy.choose(dataclasses.replace(grouped, dtype="bfloat16")) == "split"
    on_gpu = signature((8, 13, 13, 384), (3, 3, 192, 256), jnp.float32, groups=2, backend="gpu")
    assert policy.choose(on_gpu) == "xla"  # the rules are CPU findings
    no_rules = ConvPolicy.from_config(ConvConfig(rules="none"))
    assert [no_rules.choose(s) for s in (grouped, one_by_one, first, wide)] == ["xla"] * 4
    for bad, message in ((ConvConfig(table=str(table)), "not found"), (ConvConfig(rules="some"), "conv.rules")):
        with pytest.raises(ConfigError, match=message):
            ConvPolicy.from_config(bad)


def test_without_onednn_its_rules_give_way_to_the_next(monkeypatch):
    """Where oneDNN cannot be built, a layer gets the rule after the oneDNN one, not XLA's plain conv
    (AlexNet's grouped conv2 would get XLA's 15x slower grouped kernel gradient)."""
    from jaxconv.models import cpu_onednn

    policy = ConvPolicy()
    grouped = signature((8, 27, 27, 96), (5, 5, 48, 256), jnp.float32, groups=2, backend="cpu")
    first = signature((64, 32, 32, 1), (5, 5, 1, 6), jnp.float32, backend="cpu")
    few = signature((64, 14, 14, 6), (5, 5, 6, 16), jnp.float32, backend="cpu")
    masked = signature((64, 28, 28, 16), (2, 3, 16, 16), jnp.float32, padding=((1, 0), (1, 1)), backend="cpu")
    layers = (grouped, first, few, masked)
    assert [policy.choose(s) for s in layers] == ["onednn", "onednn", "onednn/native/native", "onednn/onednn/native"]
    monkeypatch.setattr(cpu_onednn, "reason", lambda: "no oneDNN here")
    assert [policy.choose(s) for s in layers] == ["split", "taps/im2col/native", "xla/native/native", "xla/xla/native"]


def test_traced_shapes_and_flops():
    convs = traced_convs("lenet5_modern")
    assert [(c.height, c.cin, c.cout, c.kh) for _, c in convs] == [(32, 1, 6, 5), (14, 6, 16, 5)]
    assert [path for path, _ in convs] == ["LeNet5/C1", "LeNet5/C3"]  # the module path, through the conv's custom_vjp
    alexnet32 = conv_shapes.shape_sets(["alexnet32"])  # the preset's own layers, traced
    assert [(s.sources, s.height, s.input_grad) for s, _ in alexnet32] == [
        ((f"alexnet32:conv{n}",), h, n > 1) for n, h in ((1, 32), (2, 15), (3, 7), (4, 7), (5, 7))]
    # LeNet-5 modern: C1 28*28*6*25, C3 10*10*16*150 MACs; dense 400*120 + 120*84 + 84*10
    assert forward_flops("lenet5_modern") == 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    # PixelCNN MNIST counts the taps its masks keep, not the zeros its (r+1) x k convs multiply: the first
    # layer (7x7 mask A, one colour) 24 taps 1 -> 32; per block 1x1 32 -> 16, 3x3 mask B 5 taps 16 -> 16,
    # 1x1 16 -> 32; head 1x1 32 -> 64 -> 1
    per_pixel = 24 * 32 + 5 * (32 * 16 + 5 * 16 * 16 + 16 * 32) + 32 * 64 + 64
    assert forward_flops("pixelcnn_mnist") == 2 * 28 * 28 * per_pixel
    # One jitted conv called twice shares its sub-jaxpr: each call is counted by its own kernel
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    one_tap = np.zeros((2, 2, 1, 1), np.float32)
    one_tap[0, 0] = 1.0
    twice = jax.make_jaxpr(lambda x, k: conv(x, k) + conv(x, k * one_tap))(jnp.ones((1, 9, 9, 1)), jnp.ones((2, 2, 1, 1)))
    assert jaxpr_flops(twice) == 2 * 64 * 4 + 2 * 64 * 1
    shapes = conv_shapes.shape_sets(["pixelcnn_mnist"])
    masked = [s for s, _ in shapes if s.mask]
    assert {(s.kh, s.mask) for s in masked} == {(7, "A"), (3, "B")}
    # each geometry is measured once, listing every layer that uses it
    assert len({s.geometry() for s, _ in shapes}) == len(shapes)
    assert any(len(s.sources) > 1 for s, _ in shapes)
    alex = conv_shapes.shape_sets(["alexnet224"])
    assert [s.out_hw() for s, _ in alex] == [(55, 55), (27, 27), (13, 13), (13, 13), (13, 13)]
    assert conv_shapes.parse_shape("4,16,16,8,8,3,1,2,2")[0].groups == 2
    for bad in ("1,2,3", "4,16,16,8,8,3,1,x", "4,16,16,6,8,3,1,1,4", "4,16,16,0,8,3,1,1"):
        with pytest.raises(ConfigError):
            conv_shapes.parse_shape(bad)


def test_conv_quick_results(quick_results):
    out, written, lines = quick_results
    doc = results.load(out / "conv.json")  # validates against the schema
    assert doc["quick"] and doc["benchmark"] == "conv" and doc["rows"]
    kinds = set()
    for row in doc["rows"]:
        kinds.add(row["kind"])
        statuses = {f"{r['impl']}/{r['layout']}": r["status"] for r in row["results"]}
        assert set(statuses.values()) == {"ok"}, statuses  # every variant agrees with the reference
        assert row["winner"] is not None and row["best_jax"] is not None
        impls = {r["impl"] for r in row["results"]}
        assert ({"masked", "cropped"} <= impls) == (row["kind"] == "masked")
        assert "torch" in impls  # the bench extra is installed in the test environment
    assert kinds == {"conv", "masked"}
    assert any(r["impl"] == "fft" for row in doc["rows"] for r in row["results"])
    assert {row["input_grad"] for row in doc["rows"]} == {True, False}  # first layers: no input gradient
    assert {row["dtype"] for row in doc["rows"]} == {"float32", "bfloat16"}
    for name in ("conv.md", "conv_roofline.png", "conv_table.json"):
        assert (out / name).exists()
    assert "winners" in json.loads((out / "conv_table.json").read_text())
    # The CPU's vector extension, which the results depend on, in the file and in its report's header.
    isa = device.cpu_vector_isa()
    assert doc["environment"]["cpu_vector_isa"] == isa
    assert f"cores{', ' + isa if isa else ''})." in (out / "conv.md").read_text().splitlines()[2]


@pytest.mark.parametrize("model, isa, name", [
    ("AMD EPYC", "AVX2", "cpu-amd-epyc-avx2-2c"), ("AMD EPYC", "AVX-512", "cpu-amd-epyc-avx512-2c"),
    ("Intel(R) Xeon(R) CPU @ 2.20GHz", "AVX-512", "cpu-intel-xeon-avx512-2c"),
    ("Neoverse-N1", "", "cpu-neoverse-n1-2c")])
def test_a_cpu_results_directory_names_the_model_its_vector_isa_and_the_cores(monkeypatch, model, isa, name):
    """Two VMs sold as the same model with different vector ISAs write their results apart."""
    monkeypatch.setattr(device, "cpu_model", lambda: model)
    monkeypatch.setattr(device, "cpu_vector_isa", lambda: isa)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    assert device.results_name() == name


def test_sample_and_train_quick_results(quick_results):
    out, _, _ = quick_results
    sample = results.load(out / "sample.json")
    assert {r["preset"].split()[0] for r in sample["rows"]} == {"pixelcnn_mnist", "gated_pixelcnn_mnist"}
    for row in sample["rows"]:
        assert row["agree"] is True  # the naive sampler redraws the cached sample exactly
        assert row["naive"]["extrapolated"] and row["naive"]["variables_timed"] < row["naive"]["variables_total"]
    train = results.load(out / "train.json")
    jax_rows = [r for r in train["rows"] if r["framework"] == "jax"]
    assert {r["devices"] for r in jax_rows} == {1, 2}
    # A quick run takes 2 steps from random weights, so every loss is still its untrained value: the
    # log of the class count (LeNet: 10 classes, AlexNet-32: ImageNet's 1000; measured 2.36 and 6.84),
    # and ln 2 nats per binary pixel for the Bernoulli PixelCNN (measured 0.6940; its PyTorch twin, whose
    # default initialisation spreads the logits more, 0.79).
    initial = {"lenet5_modern": (math.log(10), 0.25), "alexnet32": (math.log(1000), 0.25),
               "gated_pixelcnn_mnist": (math.log(2), 0.008)}
    for row in train["rows"]:
        value, tolerance = initial[row["preset"].split()[0]]
        if row["framework"] == "torch":
            tolerance = max(tolerance, 0.25)
        assert abs(row["final_loss"] - value) < tolerance, row
        # No upper bound: a quick run's peak is a few small matmuls timed while the other test worker
        # shares the cores, so a ratio above 1 is noise; the exact formula below pins the computation.
        assert 0 < row["mfu"] and math.isfinite(row["mfu"]), row
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["step_s"], rel=1e-9)
        if row["framework"] == "jax":  # the host's peak: fake CPU devices share it
            peak = train["peaks"]["matmul_flops_per_s"][row["dtype"]]
            assert row["mfu"] == pytest.approx(row["images_per_s"] * row["flops_per_image"] / peak, rel=1e-9)
    lenet = next(r for r in jax_rows if r["preset"] == "lenet5_modern (quick)")
    assert lenet["flops_per_image"] == 3 * forward_flops("lenet5_modern")  # forward + backward
    torch_rows = [r for r in train["rows"] if r["framework"] == "torch"]
    # Every quick preset has a PyTorch twin (jaxconv.bench.twins; tests/test_bench_twins.py).
    twinned = {"lenet5_modern (quick)", "alexnet32 (quick)", "gated_pixelcnn_mnist (quick)"}
    assert {r["preset"] for r in torch_rows} == twinned
    compared = {r["preset"] for r in jax_rows if r["vs_torch"]}
    assert compared == twinned
    assert {t["name"].split()[0] for t in train["targets"]} == {"lenet5_modern", "alexnet32", "gated_pixelcnn_mnist"}
    assert "PyTorch twin of gated_pixelcnn_mnist: 453 parameters, as jaxconv's" in train["notes"]
    for name in ("sample.md", "sample.png", "train.md", "train.png"):
        assert (out / name).exists()


def test_torch_alexnet32_is_the_same_network():
    from jaxconv.bench import twins

    # jaxconv's alexnet32 (tests/test_alexnet.py); every twin: tests/test_bench_twins.py
    assert twins.check_param_count("alexnet32", preset("alexnet32")) == 14_685_544


def test_report_and_readme(quick_results, tmp_path):
    out, _, _ = quick_results
    text = report.summary_markdown(out)
    assert "Placeholder" in text and "Conv layers" in text and "Sampling" in text and "Training" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.BEGIN}\nOLD-TABLE\n{report.END}\nafter\n")
    report.update_readme(readme, text)
    content = readme.read_text()
    assert "OLD-TABLE" not in content and "Sampling" in content
    assert content.startswith("before") and content.endswith("after\n")


def test_schema_rejects_bad_documents(quick_results):
    out, _, _ = quick_results
    doc = json.loads((out / "conv.json").read_text())
    results.validate(doc)
    for damage in (lambda d: d.pop("peaks"), lambda d: d["rows"][0].update(mode="sideways"),
                   lambda d: d["rows"][0]["results"][0].update(time_s="fast"), lambda d: d.update(schema_version=99),
                   lambda d: d["rows"][0].update(extra=1), lambda d: d.update(benchmark="nope")):
        bad = copy.deepcopy(doc)
        damage(bad)
        with pytest.raises(results.SchemaError):
            results.validate(bad)


def test_agreement_check_catches_a_wrong_implementation():
    """A user kernel (``conv.run(user_kernels=...)``, what ``--impl`` loads; the command line:
    tests/test_user_kernels.py) computing a convolution instead of a cross-correlation is a mismatch."""
    def flipped(x, w, strides, padding, dilation, groups):  # a plausible bug: the kernel not flipped back
        return conv_impls.conv_xla(x, w[::-1, ::-1], strides, padding, dilation, groups)

    from jaxconv.bench.device import measure_peaks

    result = conv_bench.run(quick=True, sets=[], user_shapes=["2,8,8,3,4,3,1,1"], dtypes=("float32",),
                            modes=("forward_backward", "kernel_grad"), impls=["xla", "torch"], layouts=("NHWC",),
                            peaks=measure_peaks(quick=True), log=lambda _: None,
                            user_kernels=[conv_runners.UserKernel("flipped", flipped)])
    for row in result["rows"]:
        res = {r["impl"]: r for r in row["results"]}
        assert res["xla"]["status"] == "ok" and res["xla"]["error"] < 1e-6
        assert res["torch"]["status"] == "ok"  # PyTorch's own backward kernel (kernel_grad) agrees too
        assert res["flipped"]["status"] == "mismatch" and res["flipped"]["time_s"] is None
        assert res["flipped"]["error"] > conv_runners.TOLERANCE["float32"]
        assert row["winner"]["impl"] != "flipped"
    assert conv_runners.relative_error([np.ones(3)], [np.ones(3)]) == 0.0
    assert conv_runners.relative_error([np.ones(2)], [np.ones(3)]) == float("inf")
    with pytest.raises(ConfigError, match="built-in"):
        conv_bench._variants(None, ("NHWC",), False, [conv_runners.UserKernel("xla", flipped)])


def test_cli_bench_conv_and_report(tmp_path):
    out = tmp_path / "res"
    done = run_cli("bench", "conv", "--quick", "--sets", "none", "--shape", "2,8,8,3,4,3,1,1", "--dtypes", "float32",
                   "--modes", "forward,input_grad,kernel_grad", "--impls", "xla,taps", "--layouts", "NHWC",
                   "--no-torch", "--no-plots", "--out", str(out))
    assert done.returncode == 0, done.stderr
    doc = results.load(out / "conv.json")
    assert [r["mode"] for r in doc["rows"]] == ["forward", "input_grad", "kernel_grad"]
    assert all(r["shape"] == "user:2,8,8,3,4,3,1,1" for r in doc["rows"])
    assert doc["command"].startswith("jaxconv bench conv")
    assert all(x["status"] == "ok" for r in doc["rows"] for x in r["results"])
    (winner,) = json.loads((out / "conv_table.json").read_text())["winners"].values()
    assert conv_impls.parse_impl(winner)  # a per-pass triple (or one name) of the fastest passes
    done = run_cli("bench", "report", str(out), "--no-plots")
    assert done.returncode == 0 and "Conv layers" in done.stdout, done.stderr
    done = run_cli("bench", "conv", "--shape", "1,2,3")
    assert done.returncode == ConfigError.exit_code and done.stderr.startswith("jaxconv: error: --shape '1,2,3'")


def test_the_conv_targets_are_the_issues_a_geomean_per_set_and_a_worst_shape():
    """>= 1.0 geo-mean in every shape set (the lowest set is reported) and >= 0.7 on the worst shape."""
    from jaxconv.bench.conv import _targets

    def row(shape, ratio, mode="forward_backward"):
        return {"shape": shape, "mode": mode, "dtype": "float32", "default_vs_torch": ratio}

    rows = [row("a:1", 2.0), row("a:2", 0.5), row("b:1", 0.9), row("b:2", 1.0), row("a:3", 0.1, "forward"),
            row("user:x", 0.01)]
    per_set, worst = _targets(rows, accelerator=False)
    assert "(b)" in per_set["name"] and per_set["value"] == pytest.approx(0.9 ** 0.5) and not per_set["met"]
    assert worst["value"] == 0.5 and worst["goal"] == ">= 0.7" and not worst["met"]
    per_set, worst = _targets([row("a:1", 2.0), row("a:2", 0.75)], accelerator=False)
    assert per_set["met"] and worst["met"]


def test_sample_bench_redraws_a_mixture_as_the_cached_sampler_draws_it():
    """The sample bench's agreement check draws as ``sample_cached`` does by default (a logistic mixture at
    temperature 1: a component, then a value of it), so it agrees on a logistic-mixture preset."""
    rows = bench_sample.run(quick=True, presets=["gated_pixelcnn_cifar"], log=lambda line: None)["rows"]
    assert [(r["preset"].split()[0], r["agree"]) for r in rows] == [("gated_pixelcnn_cifar", True)]


def test_bench_help_names_every_variant_and_shape_set():
    run = run_cli("bench", "--help", timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]
    words = set(run.stdout.replace(",", " ").replace("(", " ").replace(")", " ").replace(";", " ").split())
    assert set(conv_runners.BUILTIN_IMPLS) <= words, set(conv_runners.BUILTIN_IMPLS) - words
    assert set(conv_shapes.SETS) <= words, set(conv_shapes.SETS) - words
