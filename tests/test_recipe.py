"""The modern LeNet recipe (issue 15): lenet_modern_mnist trains with augmentation, dropout and SGD;
its smoke size stays the tests' plain 20 steps; the faithful recipe keeps the 1998 network."""

import jax
import numpy as np

from jaxconv import experiments
from jaxconv.config import apply_overrides
from jaxconv.data.pipeline import train_batches
from jaxconv.train.loop import build_run


def test_the_modern_recipe_augments_regularises_and_fits_a_few_minutes():
    cfg = experiments.load("lenet_modern_mnist")
    assert cfg.model.variant == "modern" and 0 < cfg.model.dropout < 0.5
    data = cfg.data
    assert data.augment_elastic == 0  # no gain over the affine distortions (the experiment's docstring)
    assert data.augment_crop_pad == 2 and data.augment_rotate == 10 and data.augment_scale == 0.1
    assert not data.augment_flip  # a mirrored digit is no digit
    assert cfg.optim.name == "momentum" and cfg.optim.nesterov and cfg.optim.weight_decay > 0
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_steps > 0 and cfg.schedule.final_factor == 0
    assert 3000 <= cfg.train.steps <= 6000  # a few minutes on 2 CPU cores
    assert cfg.train.steps % cfg.train.eval_every == 0 and cfg.train.steps % cfg.checkpoint.every == 0


def test_the_smoke_size_stays_the_plain_20_steps():
    smoke = experiments.load("lenet_modern_mnist", smoke=True)
    assert smoke.train.steps == 20 and smoke.model.dropout == 0 and smoke.optim.name == "adam"
    data = smoke.data
    assert (data.augment_crop_pad, data.augment_rotate, data.augment_scale, data.augment_elastic) == (0, 0, 0, 0)


def test_the_faithful_recipe_keeps_the_1998_network():
    cfg = experiments.load("lenet_mnist")
    assert cfg.model.variant == "faithful" and cfg.model.dropout == 0
    data = cfg.data
    assert (data.augment_crop_pad, data.augment_rotate, data.augment_scale, data.augment_elastic) == (0, 0, 0, 0)
    assert cfg.optim.name == "momentum" and cfg.optim.weight_decay == 0 and cfg.train.steps == 3000


def recipe_steps(steps: int, *overrides: str):
    """``steps`` train steps of the full recipe (distortions, dropout, SGD): losses and parameters."""
    cfg = apply_overrides(experiments.load("lenet_modern_mnist"), ["train.progress=false", *overrides])
    run = build_run(cfg)
    state = run.par.place_state(run.init())
    batches = train_batches(run.train_data, cfg.data.batch_size, cfg.data.seed, 0)
    losses = []
    for _ in range(steps):
        state, metrics = run.train_step(state, run.par.put_batch(next(batches)))
        losses.append(float(jax.device_get(run.par.single_copy(metrics))["loss"]))
    return losses, jax.device_get(run.par.single_copy(state).params)


def test_the_recipe_trains_deterministically_from_the_seed():
    """Augmentation and dropout are random from (train.seed, step) alone: the same seed gives the same
    steps, another seed other ones; the training loss falls."""
    first, _ = recipe_steps(40, "parallel.num_devices=1", "schedule.warmup_steps=5")
    again, _ = recipe_steps(3, "parallel.num_devices=1", "schedule.warmup_steps=5")
    assert first[:3] == again
    other, _ = recipe_steps(3, "parallel.num_devices=1", "schedule.warmup_steps=5", "train.seed=1")
    assert other != again
    assert np.mean(first[-5:]) < 0.7 * np.mean(first[:5]), first


def test_one_recipe_step_is_the_same_on_1_and_8_devices():
    """Under jit the dropout masks and augmentations are drawn for the global batch, whatever the
    devices (pmap draws each device's separately, by design)."""
    one, one_params = recipe_steps(1, "parallel.num_devices=1")
    eight, eight_params = recipe_steps(1, "parallel.num_devices=8")
    np.testing.assert_allclose(eight, one, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eight_params, one_params)


def test_cross_validation_folds_through_the_cli(tmp_path):
    """``--set data.cv_fold=K`` trains on three quarters of the train split and validates on the fourth,
    in training and in ``jaxconv eval`` alike (the run's config.json keeps the fold)."""
    from conftest import run_cli

    done = run_cli("train", "lenet_modern_mnist", "--smoke", "--set", "parallel.num_devices=1", "--set",
                   "data.cv_fold=3", "--workdir", str(tmp_path))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    fold = "(data.cv_fold=3: its held-out quarter of the train split)"
    assert f"step 20, validation {fold}" in done.stdout, done.stdout  # not to pass for the validation images
    trained = "\n".join(line for line in done.stdout.split(fold)[-1].splitlines() if line.startswith("  "))
    evaluated = run_cli("eval", str(tmp_path), "--checkpoint", "latest")
    assert evaluated.returncode == 0 and evaluated.stderr == "", evaluated.stderr
    assert f"split val {fold}" in evaluated.stdout, evaluated.stdout
    for line in ("count 1000", *[" ".join(m.split()) for m in trained.splitlines() if "accuracy" in m]):
        assert line in " ".join(evaluated.stdout.split()), (line, evaluated.stdout)
    on_train = run_cli("eval", str(tmp_path), "--checkpoint", "latest", "--split", "train")
    assert on_train.returncode == 0 and on_train.stderr == "", on_train.stderr
    assert "count 3000" in " ".join(on_train.stdout.split())  # the held-out quarter is not trained on
    assert "split train (data.cv_fold=3: the other three quarters of the train split)" in on_train.stdout
