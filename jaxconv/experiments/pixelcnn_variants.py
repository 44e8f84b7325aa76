"""Study: PixelCNN vs Gated PixelCNN (without/with dilation) and the three output heads, equal budget.

Run: ``jaxconv train pixelcnn_variants`` (``--smoke`` for the tests' size; ``--set`` applies to every
run). Every variant trains on the embedded MNIST with seed 0 and the same batch (64), steps (1,500),
optimiser (Adam 2e-3, clipping at 1, warm-up + cosine) and evaluation split (the 1,000 held-out
images); binarised data (pixel > 127) for the Bernoulli head, the raw 8-bit pixels for the softmax
and logistic-mixture heads. The three binary variants train twice, with seeds 0 and 1 (initialisation,
per-step randomness and batch order), so that the table shows how far a difference between them is
beyond the spread of one variant's runs. Writes ``results.md``, ``results.png`` and ``samples.png``
(see ``jaxconv.study``).
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

_GATED = preset("gated_pixelcnn_mnist")
MODELS = {
    "pixelcnn": preset("pixelcnn_mnist"),
    "gated_no_dilation": dataclasses.replace(_GATED, dilations=(1,)),
    "gated_dilated": _GATED,
    "gated_dilated_softmax": dataclasses.replace(_GATED, head="softmax", output_features=128),
    "gated_dilated_mixture": dataclasses.replace(_GATED, head="logistic_mixture", mixtures=5),
}
_TINY = {"pixelcnn": {"hidden": 8, "num_blocks": 2, "output_features": 16}}  # smoke sizes
_TINY_GATED = {"features": 8, "num_layers": 2, "output_features": 16}


SEEDS = {"pixelcnn": (0, 1), "gated_no_dilation": (0, 1), "gated_dilated": (0, 1)}  # the others: seed 0


def _config(name: str, model, smoke: bool, seed: int = 0) -> Config:
    binary = model.head == "bernoulli"
    return Config(
        name=f"pixelcnn_variants/{name}",
        model=model,
        data=DataConfig(source="mnist", pixels="binary" if binary else "uint8", batch_size=32 if smoke else 64,
                        eval_batch_size=200, seed=seed),
        optim=OptimConfig(name="adam", learning_rate=0.01 if smoke else 2e-3, grad_clip_norm=1.0),
        schedule=ScheduleConfig(name="cosine", warmup_steps=2 if smoke else 100),
        train=TrainConfig(steps=10 if smoke else 1500, log_every=5 if smoke else 100, eval_every=0,
                          progress=not smoke, seed=seed),
        checkpoint=CheckpointConfig(every=0 if smoke else 500, best_metric="bits_per_dim", best_mode="min"),
    )


def _runs(smoke: bool) -> dict[str, Config]:
    """Each variant's runs: seed 0 in the directory named after the variant, seed s in VARIANT-seedS."""
    runs = {}
    for name, model in MODELS.items():
        if smoke:
            model = dataclasses.replace(model, **_TINY.get(name, _TINY_GATED))
        for seed in SEEDS.get(name, (0,)):
            runs[name if seed == 0 else f"{name}-seed{seed}"] = _config(name, model, smoke, seed)
    return runs


VARIANTS = _runs(smoke=False)
SMOKE_VARIANTS = _runs(smoke=True)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("pixelcnn_variants")
