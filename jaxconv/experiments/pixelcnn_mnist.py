"""PixelCNN (van den Oord et al. 2016, masks A/B) on binarised embedded MNIST; NLL in nats per image.

Run: ``jaxconv train pixelcnn_mnist`` (or ``python -m jaxconv.experiments.pixelcnn_mnist``); ``--smoke``
for the tests' size. Binarisation: fixed threshold, pixel > 127 -> 1. Recipe: Adam 1e-3, batch 64, cosine decay,
3,000 steps. The paper's 81.30 nats is on the 60k-image binarised MNIST with a larger network.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="pixelcnn_mnist",
    model=preset("pixelcnn_mnist"),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200),
    optim=OptimConfig(name="adam", learning_rate=1e-3, grad_clip_norm=1.0),
    schedule=ScheduleConfig(name="cosine", warmup_steps=100),
    train=TrainConfig(steps=3000, log_every=100, eval_every=1000),
    checkpoint=CheckpointConfig(every=1000, best_metric="nll_nats", best_mode="min"),
)

SMOKE = CONFIG.replace(
    model=dataclasses.replace(CONFIG.model, hidden=8, num_blocks=2, output_features=16),
    data=DataConfig(source="mnist", batch_size=32, eval_batch_size=200),
    train=TrainConfig(steps=20, log_every=5, eval_every=20, progress=False),
    checkpoint=CheckpointConfig(every=10, best_metric="nll_nats", best_mode="min"),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("pixelcnn_mnist")
