import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import config as config_lib
from jaxconv.config import Config, DataConfig, OptimConfig, ParallelConfig, TrainConfig
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_model
from jaxconv.models.alexnet import LRN_PAPER, AlexNetConfig, local_response_norm


def count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def abstract_init(model, size: int, batch: int = 2):
    """(logits, variables) as shapes only: the 224 models are never allocated."""
    x = jnp.zeros((batch, size, size, 3))
    return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False, capture_intermediates=True))


def small(variant: str, **kw) -> AlexNetConfig:
    return AlexNetConfig(variant=variant, width=0.125, **kw)


def numpy_params(model, x, seed: int = 0):
    """He-scaled random parameters without compiling the PRNG (slow to compile on a CPU)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1])) if len(s.shape) > 1
                                   else rng.normal(size=s.shape) * 0.1).astype(np.float32), abstract)


def shapes(variables) -> dict[str, tuple]:
    return {name: out["__call__"][0].shape[1:] for name, out in variables["intermediates"].items()
            if name.startswith(("conv", "fc"))}


@pytest.mark.parametrize("name, size, expected", [
    # Hand-derived in jaxconv/models/alexnet.py (weights + biases per layer):
    # 34,944 + 307,456 + 885,120 + 663,936 + 442,624 + 37,752,832 + 16,781,312 + 4,097,000
    ("alexnet", 224, 60_965_224),
    # ungrouped conv2/4/5: 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992 + the same dense layers
    ("alexnet_single", 224, 62_378_344),
    # 7,296 + 614,656 + 885,120 + 1,327,488 + 884,992 + 4,720,640 + 4,196,352 + 2,049,000
    ("alexnet32", 32, 14_685_544),
    # as alexnet32 with fc8 2048*10 + 10 = 20,490
    ("alexnet32_cifar10", 32, 12_657_034),
])
def test_parameter_counts_and_output(name, size, expected):
    logits, variables = abstract_init(build_model(PRESETS[name]), size)
    assert count(variables["params"]) == expected
    assert logits.shape == (2, PRESETS[name].num_classes) and logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", ["alexnet", "alexnet_single"])
@pytest.mark.parametrize("size", [224, 227])
def test_224_and_227_inputs_give_the_papers_maps(name, size):
    _, variables = abstract_init(build_model(PRESETS[name]), size)
    assert shapes(variables) == {
        "conv1": (55, 55, 96), "conv2": (27, 27, 256), "conv3": (13, 13, 384), "conv4": (13, 13, 384),
        "conv5": (13, 13, 256), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
    }


def test_cifar32_maps():
    _, variables = abstract_init(build_model(PRESETS["alexnet32"]), 32)
    assert shapes(variables) == {
        "conv1": (32, 32, 96), "conv2": (15, 15, 256), "conv3": (7, 7, 384), "conv4": (7, 7, 384),
        "conv5": (7, 7, 256), "fc6": (2048,), "fc7": (2048,), "fc8": (1000,),
    }


def test_faithful_convs_2_4_5_are_grouped_and_conv3_is_not():
    def kernels(name):
        params = abstract_init(build_model(PRESETS[name]), 224)[1]["params"]
        return {layer: p["kernel"].shape for layer, p in params.items()}

    faithful, single = kernels("alexnet"), kernels("alexnet_single")
    assert faithful["conv1"] == single["conv1"] == (11, 11, 3, 96)
    assert faithful["conv2"] == (5, 5, 48, 256) and single["conv2"] == (5, 5, 96, 256)
    assert faithful["conv3"] == single["conv3"] == (3, 3, 256, 384)
    assert faithful["conv4"] == (3, 3, 192, 384) and single["conv4"] == (3, 3, 384, 384)
    assert faithful["conv5"] == (3, 3, 192, 256) and single["conv5"] == (3, 3, 384, 256)


def test_towers_meet_only_at_conv3():
    """Changing tower B's conv1 kernels leaves tower A's conv2 output alone (LRN, pooling and conv2
    stay within a tower) but changes every conv3 output (conv3 sees both towers)."""
    model = build_model(small("faithful"))  # channels 12, 32, 48, 48, 32
    x = np.random.default_rng(1).random((1, 67, 67, 3), np.float32)  # 67 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1
    params = numpy_params(model, x)
    half = params["conv1"]["kernel"].shape[-1] // 2
    changed = jax.tree.map(np.copy, params)
    changed["conv1"]["kernel"][..., half:] *= 3.0

    @jax.jit
    def maps(p):
        _, state = model.apply({"params": p}, x, capture_intermediates=True)
        return {k: state["intermediates"][k]["__call__"][0] for k in ("conv2", "conv3")}

    before, after = jax.device_get((maps(params), maps(changed)))
    c2 = before["conv2"].shape[-1] // 2
    np.testing.assert_array_equal(before["conv2"][..., :c2], after["conv2"][..., :c2])
    assert np.all(np.abs(before["conv2"][..., c2:] - after["conv2"][..., c2:]).max(axis=(0, 1, 2)) > 0)
    assert np.all(np.abs(before["conv3"] - after["conv3"]).max(axis=(0, 1, 2)) > 0)


def lrn_reference(a: np.ndarray, k: float, n: int, alpha: float, beta: float, groups: int) -> np.ndarray:
    """The paper's formula, one channel at a time, the sum clipped to the channel's tower."""
    out = np.empty_like(a, dtype=np.float64)
    size = a.shape[-1] // groups
    for i in range(a.shape[-1]):
        lo, hi = i // size * size, (i // size + 1) * size
        js = range(max(lo, i - n // 2), min(hi - 1, i + n // 2) + 1)
        out[..., i] = a[..., i] / (k + alpha * sum(a[..., j].astype(np.float64) ** 2 for j in js)) ** beta
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_matches_the_papers_formula(groups):
    assert LRN_PAPER == dict(k=2.0, n=5, alpha=1e-4, beta=0.75)
    a = np.random.default_rng(0).uniform(0, 80, (2, 3, 3, 12)).astype(np.float32)  # alpha*sum ~ 1
    got = np.asarray(jax.jit(lambda a: local_response_norm(a, **LRN_PAPER, groups=groups))(a))
    np.testing.assert_allclose(got, lrn_reference(a, **LRN_PAPER, groups=groups), rtol=1e-5)
    # the window is n = 5 channels wide, centred: channel 0 sees channels 0..2, not 3
    b = np.zeros((1, 1, 1, 12), np.float32)
    b[..., 0], b[..., 3] = 1.0, 10.0
    assert lrn_reference(b, k=1.0, n=5, alpha=1.0, beta=1.0, groups=1)[0, 0, 0, 0] == 0.5


def test_dropout_only_when_training():
    model = build_model(small("cifar32", num_classes=10))
    x = np.random.default_rng(1).random((4, 32, 32, 3), np.float32)
    variables = {"params": numpy_params(model, x)}
    run = jax.jit(lambda key, train: model.apply(variables, x, train=train, rngs={"dropout": key}), static_argnums=1)
    k1, k2 = jax.random.key(2), jax.random.key(3)
    np.testing.assert_array_equal(run(k1, False), run(k2, False))
    assert not np.allclose(run(k1, True), run(k2, True))
    np.testing.assert_array_equal(run(k1, True), run(k1, True))
    jax.eval_shape(lambda: model.apply(variables, x))  # evaluation needs no dropout rng


@pytest.mark.parametrize("variant, size", [("cifar32", 32), ("faithful", 67)])
def test_bfloat16_compute_is_finite_and_close_to_float32(variant, size):
    cfg = small(variant)
    x = np.random.default_rng(1).random((2, size, size, 3), np.float32)
    params = {"params": numpy_params(build_model(cfg), x)}
    ref = jax.jit(build_model(cfg).apply)(params, x)
    out = jax.jit(build_model(cfg, dtype=jnp.bfloat16).apply)(params, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    scale = float(jnp.abs(ref).max())
    assert scale > 0
    np.testing.assert_allclose(out, ref, atol=0.05 * scale, rtol=0.05)


def test_variant_and_width_overrides_type_check_and_round_trip(tmp_path):
    cfg = Config(name="alexnet_test", model=PRESETS["alexnet32"])
    cfg = config_lib.apply_overrides(cfg, ["model.variant=single", "model.width=0.5", "model.dropout=0.25"])
    assert cfg.model == AlexNetConfig(variant="single", num_classes=1000, dropout=0.25, width=0.5)
    assert config_lib.to_dict(cfg)["model"]["family"] == "alexnet"
    config_lib.save(cfg, tmp_path / "config.json")
    assert config_lib.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("override, message", [
    ("model.variant=tiny", "allowed values: faithful, single, cifar32"),
    ("model.dropout=1.0", "model.dropout must be in [0, 1), got 1.0"),
    ("model.width=0", "model.width must be > 0, got 0.0"),
    ("model.num_classes=1", "model.num_classes must be >= 2, got 1"),
])
def test_bad_model_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        config_lib.apply_overrides(Config(name="alexnet_test", model=PRESETS["alexnet"]), [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_few_steps_of_alexnet32_reduce_the_training_loss():
    """The lenet_modern_mnist recipe on a synthetic 32x32x3 source (fixed random labels to fit)."""
    from jaxconv.data.pipeline import train_batches
    from jaxconv.train import loop

    cfg = Config(
        name="alexnet32_synthetic",
        model=dataclasses.replace(PRESETS["alexnet32_cifar10"], width=0.25),
        data=DataConfig(source="synthetic", image_shape=(32, 32, 3), num_classes=10, num_examples=16,
                        batch_size=16, eval_batch_size=16),
        optim=OptimConfig(name="adam", learning_rate=3e-4),
        train=TrainConfig(steps=30, progress=False),
        parallel=ParallelConfig(num_devices=1),
    )
    config_lib.validate(cfg)
    run = loop.build_run(cfg)
    state = run.par.place_state(run.init())
    before = loop.evaluate(run, state.params, run.train_data)
    batches = train_batches(run.train_data, cfg.data.batch_size, 0, 0)
    for _ in range(cfg.train.steps):
        state, metrics = run.train_step(state, run.par.put_batch(next(batches)))
    after = loop.evaluate(run, state.params, run.train_data)
    # more than shrinking over-confident initial logits: well below a uniform guess, ln 10 = 2.30
    assert after["loss"] < min(0.6 * before["loss"], np.log(10) - 0.5), (before, after)
