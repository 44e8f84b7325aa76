"""The PyTorch twins of ``jaxconv bench train`` (``jaxconv.bench.twins``): the same networks as jaxconv's.

Parameter counts equal jaxconv's at the quick and the full preset sizes; given jaxconv's weights, a twin
computes jaxconv's outputs; the twins' masked convolutions are causal; a parameter mismatch is an error;
``measure_torch`` gives a row for every twin at the quick sizes. Timings are never asserted.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxconv.bench import train as train_bench
from jaxconv.bench import twins
from jaxconv.bench.models import param_count, random_params
from jaxconv.config import ScheduleConfig
from jaxconv.data.pipeline import train_batches
from jaxconv.data.sources import load_split
from jaxconv.models import PRESETS, build_model, pixelcnn
from jaxconv.train.state import make_schedule

FULL = {"lenet5": 60_850, "lenet5_modern": 61_706, "alexnet32": 14_685_544, "pixelcnn_mnist": 20_737,
        "gated_pixelcnn_mnist": 111_137}
# Small configs with three colour groups (the channel masks at the centre taps) and dilation.
RGB = {
    "pixelcnn_mnist": pixelcnn.PixelCNNConfig(channels=3, head="softmax", hidden=12, num_blocks=2, first_kernel=5,
                                              dilations=(1, 2), output_features=24),
    "gated_pixelcnn_mnist": pixelcnn.GatedPixelCNNConfig(channels=3, head="softmax", features=12, num_layers=2,
                                                         dilations=(1, 2), output_features=24),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The twins here are tiny: PyTorch's thread pool beside JAX's on a shared 2-core machine only adds
    waiting (a 1.5 s test took 17 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick_model(name):
    return train_bench.run_config(name, 8, 1, "float32", quick=True).model


def test_the_bench_compares_every_twin():
    assert train_bench.TORCH_PRESETS == twins.TWINS


@pytest.mark.parametrize("name", twins.TWINS)
def test_the_jax_side_does_the_twins_work_no_augmentation_and_the_presets_network(name):
    """The twins train on the batch as it is: LeNet-5 modern's experiment augments in its train step
    (affine distortions, 9% of the step at batch 256), which the comparison must leave out."""
    config = train_bench.run_config(name, 64, 1, "float32", quick=False)
    assert config.model == PRESETS[name]
    augmenting = {f.name: getattr(config.data, f.name) for f in dataclasses.fields(config.data)
                  if f.name.startswith("augment_") and getattr(config.data, f.name)}
    assert not augmenting


@pytest.mark.parametrize("name", twins.TWINS)
def test_parameter_counts_equal_jaxconvs_at_quick_and_full_size(name):
    assert twins.check_param_count(name, PRESETS[name]) == FULL[name] == param_count(name)
    small = quick_model(name)
    assert twins.check_param_count(name, small) == param_count(name, small)
    if name != "lenet5" and name != "lenet5_modern":  # --quick shrinks the others: the twin follows
        assert twins.twin_param_count(name, small) < FULL[name]


def test_a_parameter_mismatch_is_an_error(monkeypatch):
    real = twins.build

    def one_extra(name, model):
        twin = real(name, model)
        twin.net.extra = torch.nn.Parameter(torch.zeros(1))
        return twin

    monkeypatch.setattr(twins, "build", one_extra)
    with pytest.raises(twins.TwinMismatchError, match="61,707 trainable parameters, jaxconv's model 61,706"):
        twins.check_param_count("lenet5_modern", PRESETS["lenet5_modern"])
    config = train_bench.run_config("lenet5_modern", 8, 1, "float32", quick=True)
    images, labels = np.zeros((8, 28, 28, 1), np.uint8), np.zeros(8, np.int32)
    with pytest.raises(twins.TwinMismatchError):
        train_bench.measure_torch("lenet5_modern", config, 8, images, labels, {}, None, {}, quick=True)


def load_jax_params(net, params):
    """jaxconv's parameters into the twin: module paths as jaxconv's ('blocks_0' -> 'blocks.0'), kernels
    HWIO -> OIHW, dense (in, out) -> (out, in), C3's (5, 5, 60) -> (60, 5, 5)."""
    state = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [re.sub(r"_(\d+)$", r".\1", k.key) for k in path]
        value = torch.from_numpy(np.array(leaf))
        if keys[-1] == "kernel":
            keys[-1] = "weight"
            value = {4: lambda v: v.permute(3, 2, 0, 1), 3: lambda v: v.permute(2, 0, 1), 2: lambda v: v.T,
                     }[value.ndim](value)
        state[".".join(keys)] = value.contiguous()
    net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name, config, shape", [
    ("lenet5", PRESETS["lenet5"], (2, 32, 32, 1)),  # the twin's input padding (28 -> 32) is its loss's
    ("pixelcnn_mnist", None, (2, 7, 7, 1)), ("gated_pixelcnn_mnist", None, (2, 7, 7, 1)),
    ("pixelcnn_mnist", RGB["pixelcnn_mnist"], (2, 6, 6, 3)), ("gated_pixelcnn_mnist", RGB["gated_pixelcnn_mnist"],
                                                            (2, 6, 6, 3))],
    ids=["lenet5", "pixelcnn", "gated", "pixelcnn-rgb", "gated-rgb"])
def test_given_jaxconvs_weights_a_twin_computes_jaxconvs_outputs(name, config, shape):
    config = config or dataclasses.replace(quick_model(name), output_features=5)
    model = build_model(config)
    params = random_params(model, shape[1:], seed=3)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    expected = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))
    net = twins.build(name, config).net.eval()
    load_jax_params(net, params)
    with torch.no_grad():
        out = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    if out.ndim == 4:  # NCHW -> NHWC
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def variable_outputs(net, x, config, weights):
    """Each variable's raw outputs reduced to one number (a fixed random mix of its logits): [B, C, H, W]."""
    raw = net(x)
    b, _, h, w = raw.shape
    return (raw.view(b, config.channels, -1, h, w) * weights).sum(2)


@pytest.mark.parametrize("name, rgb", [("pixelcnn_mnist", False), ("gated_pixelcnn_mnist", False),
                                       ("pixelcnn_mnist", True), ("gated_pixelcnn_mnist", True)],
                         ids=["pixelcnn", "gated", "pixelcnn-rgb", "gated-rgb"])
def test_the_twins_masked_convs_are_causal(name, rgb):
    config = RGB[name] if rgb else dataclasses.replace(quick_model(name), kernel=3)
    torch.manual_seed(0)
    net = twins.build(name, config).net.eval()
    with torch.no_grad():  # zero biases: a ReLU is then alive for about half of the random inputs
        for p_name, p in net.named_parameters():
            if p_name.endswith("bias"):
                p.zero_()
    c, h, w = config.channels, 5, 5
    weights = torch.randn(1, 1, config.head_channels // c, 1, 1)
    f = lambda x: variable_outputs(net, x, config, weights)  # noqa: E731
    seen = np.zeros((c, h, w, c, h, w), bool)  # output variable (c, i, j) -> input variables (c', i', j')
    for seed in range(8):  # a union over inputs: a ReLU dead at one input hides a path
        x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        jac = torch.autograd.functional.jacobian(f, x)  # [1, C, H, W, 1, C, H, W]
        seen |= (jac[0, :, :, :, 0] != 0).numpy()
    order = lambda cc, i, j: (i * w + j) * c + cc  # noqa: E731  raster order, then R, G, B
    for cc, i, j in np.ndindex(c, h, w):
        for c2, i2, j2 in zip(*np.nonzero(seen[cc, i, j])):
            assert order(c2, i2, j2) < order(cc, i, j), ((cc, i, j), (c2, i2, j2))
        if j > 0:  # never blind to the pixel on its left (nor, in colour, to its own earlier channels)
            assert seen[cc, i, j, :, i, j - 1].all()
        assert seen[cc, i, j, :cc, i, j].all()

    # Perturbing one variable (the last channel of a pixel) changes no output at or before it, and some after.
    x = torch.rand(1, c, h, w) * 2 - 1
    i0, j0 = 2, 2
    y = x.clone()
    y[:, c - 1, i0, j0] += 0.5
    with torch.no_grad():
        changed = (f(x) - f(y)).abs()[0].numpy()  # [C, H, W]
    later = np.fromfunction(order, (c, h, w), dtype=int) > order(c - 1, i0, j0)
    assert changed[~later].max() < 1e-6 and changed[later].max() > 1e-4


def test_the_schedule_is_jaxconvs():
    for schedule in (ScheduleConfig(name="cosine", warmup_steps=10, final_factor=0.1),
                     ScheduleConfig(name="step", warmup_steps=5, boundaries=(20, 40), decay_factor=0.5),
                     ScheduleConfig(name="constant", warmup_steps=3)):
        ours, theirs = twins.lr_factor(schedule, 60), make_schedule(schedule, 2.0, 60)
        for step in (0, 1, 4, 5, 9, 10, 19, 20, 21, 39, 40, 59, 60, 70):
            assert 2.0 * ours(step) == pytest.approx(float(theirs(step)), rel=1e-5, abs=1e-7), (schedule, step)


@pytest.fixture(scope="module")
def quick_rows():
    peaks = {"matmul_flops_per_s": {"float32": 1e10, "bfloat16": 1e10}}
    timing = {"repeats": 1, "min_time": 0.0, "warmup": 1, "budget": 2.0}
    rows = {}
    for name in twins.TWINS:
        config = train_bench.run_config(name, 8, 1, "float32", quick=True)
        batch = next(train_batches(load_split(config.data, "train"), 8, 0, 0))
        rows[name] = train_bench.measure_torch(name, config, 8, batch["images"], batch["labels"], timing, 1e6,
                                               peaks, quick=True)
    return rows


@pytest.mark.parametrize("name", twins.TWINS)
def test_measure_torch_gives_a_quick_row_per_twin(quick_rows, name):
    row = quick_rows[name]
    assert row["preset"] == f"{name} (quick)" and row["framework"] == "torch" and row["batch"] == 8
    assert row["images_per_s"] == pytest.approx(8 / row["step_s"]) and row["mfu"] > 0
    # Two steps from PyTorch's default initialisation: about the untrained loss (10 or 1000 classes;
    # about ln 2 nats per binary pixel, the logits' initial spread adds a little).
    expected = {"alexnet32": math.log(1000), "pixelcnn_mnist": math.log(2), "gated_pixelcnn_mnist": math.log(2)}
    value = expected.get(name, math.log(10))
    assert value - 0.1 < row["final_loss"] < value + 0.3, row


def test_the_targets_ratio_times_jaxconv_and_its_twin_in_turns(monkeypatch):
    """The default-device row and the twin's are timed alternately, the ratio the median of the turns'."""
    from jaxconv import timing

    calls = []

    def recording(first, second, **kwargs):
        calls.append(kwargs["repeats"])
        return timing.time_alternately(lambda: (calls.append("jax"), first())[1],
                                       lambda: (calls.append("torch"), second())[1], **kwargs)

    monkeypatch.setattr(train_bench, "time_alternately", recording)
    peaks = {"matmul_flops_per_s": {"float32": 1e10, "bfloat16": 1e10}}
    timing_config = {"repeats": 3, "min_time": 0.0, "warmup": 1, "budget": 30.0}
    row, trow = train_bench.measure_pair("lenet5_modern", 8, 1, quick=True, timing=timing_config, peaks=peaks,
                                         flops_per_image=1e6)
    turns = [c for c in calls if isinstance(c, str)]
    assert calls[0] == 3 and turns[4:] == ["jax", "torch"] * 3  # compile and estimate each, then 3 turns
    assert row["framework"] == "jax" and trow["framework"] == "torch"
    per_turn = sorted(j / t for j, t in zip(row["runs"], trow["runs"]))  # jax / torch images/s, per turn
    assert row["vs_torch"] == pytest.approx(per_turn[1])
