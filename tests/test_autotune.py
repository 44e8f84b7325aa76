"""conv.autotune: the layers a model has, measured once per machine, the fastest agreeing
implementation chosen, recorded in the work directory and reused on resume."""

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp

from jaxconv import autotune
from jaxconv.models import conv_impls, cpu_conv_grads, cpu_onednn, preset
from jaxconv.models.conv_policy import ConvGeometry, ConvPolicy, Signature


def test_layer_signatures_are_the_models_conv_layers():
    lenet = autotune.layer_signatures(preset("lenet5_modern"), "float32", (28, 28, 1), 16)
    assert [s.key() for s in lenet] == ["cpu/float32/32x32x1->6/k5x5/s1x1/d1x1/p0,0,0,0/g1",
                                        "cpu/float32/14x14x6->16/k5x5/s1x1/d1x1/p0,0,0,0/g1"]
    assert {s.batch for s in lenet} == {16}
    gated = autotune.layer_signatures(preset("gated_pixelcnn_mnist"), "bfloat16", (28, 28, 1), 4)
    assert len(gated) > 2 and {s.dtype for s in gated} == {"bfloat16"}


def test_a_fast_wrong_implementation_never_wins(monkeypatch):
    fast_and_wrong = lambda x, kernel, *args: jnp.zeros(  # noqa: E731
        (x.shape[0], x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1, kernel.shape[3]), x.dtype)
    monkeypatch.setitem(conv_impls.IMPLEMENTATIONS, "zeros", fast_and_wrong)
    sig = Signature.of(ConvGeometry(8, 8, 3, 4, 3, 3), 2, jnp.float32)
    winners = autotune.measure(sig)
    assert "zeros" not in winners.split("/")
    assert all(part in conv_impls.IMPLEMENTATIONS for part in winners.split("/"))


def test_the_cache_measures_each_layer_once_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path))
    sigs = [Signature.of(ConvGeometry(8, 8, 2, 4, 3, 3), 2, jnp.float32)]
    logged = []
    first = autotune.tuned_table(sigs, logged.append)
    assert any("autotuning" in line for line in logged)
    logged.clear()
    assert autotune.tuned_table(sigs, logged.append) == first and not logged  # from the cache
    cache = json.loads(autotune.cache_path().read_text())
    assert list(cache.values()) == list(first.values())
    autotune.cache_path().write_text("{not json")  # a damaged cache is measured again, never trusted
    again = autotune.tuned_table(sigs, logged.append)
    assert logged and set(again) == set(first)
    assert json.loads(autotune.cache_path().read_text()) == {autotune.cache_key(sigs[0]): again[sigs[0].key()]}
    policy = autotune.policy_with(ConvPolicy(), first)
    assert policy.choose(sigs[0]) == first[sigs[0].key()]


def test_train_with_autotune_records_its_winners_and_resumes_with_them(cli, tmp_path):
    env = {**os.environ, "JAXCONV_CACHE_DIR": str(tmp_path / "cache")}
    # The session's C++ libraries, copied: an empty autotune cache, without building them again.
    assert cpu_conv_grads.reason() == "" and cpu_onednn.reason() == ""
    shutil.copytree(Path(os.environ["JAXCONV_CACHE_DIR"]) / "native", tmp_path / "cache" / "native")
    workdir = tmp_path / "run"
    args = ("train", "lenet_modern_mnist", "--smoke", "--workdir", str(workdir), "--set", "conv.autotune=true",
            *[a for item in ("train.steps=2", "train.eval_every=2", "checkpoint.every=2") for a in ("--set", item)])
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "autotuning conv" in first.stderr and "Traceback" not in first.stderr
    recorded = json.loads((workdir / "conv_table.json").read_text())["winners"]
    assert set(recorded) == {"cpu/float32/32x32x1->6/k5x5/s1x1/d1x1/p0,0,0,0/g1",
                             "cpu/float32/14x14x6->16/k5x5/s1x1/d1x1/p0,0,0,0/g1"}
    assert json.loads((workdir / "config.json").read_text())["conv"]["autotune"] is True
    (tmp_path / "cache" / "conv_autotune.json").unlink()  # the resume reads the workdir, not the cache
    resumed = cli(*args, env=env)  # a second start builds the same run from the recorded winners
    assert resumed.returncode == 0, resumed.stderr
    assert "autotuning conv" not in resumed.stderr and "Traceback" not in resumed.stderr
    assert json.loads((workdir / "conv_table.json").read_text())["winners"] == recorded
    assert not (tmp_path / "cache" / "conv_autotune.json").exists()
