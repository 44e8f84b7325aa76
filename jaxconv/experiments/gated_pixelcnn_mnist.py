"""Gated PixelCNN (vertical/horizontal stacks, no blind spot, dilation) on binarised embedded MNIST.

Run: ``jaxconv train gated_pixelcnn_mnist``; ``--smoke`` for the tests' size. Binarisation: pixel > 127.
Recipe: Adam 2e-3 with gradient clipping at 1, batch 64, warm-up + cosine, 3,000 steps.
``--set model.num_classes=10`` makes it class-conditional.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="gated_pixelcnn_mnist",
    model=preset("gated_pixelcnn_mnist"),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200),
    optim=OptimConfig(name="adam", learning_rate=2e-3, grad_clip_norm=1.0),
    schedule=ScheduleConfig(name="cosine", warmup_steps=100),
    train=TrainConfig(steps=3000, log_every=100, eval_every=1000),
    checkpoint=CheckpointConfig(every=1000, best_metric="nll_nats", best_mode="min"),
)

SMOKE = CONFIG.replace(
    model=dataclasses.replace(CONFIG.model, features=8, num_layers=2, output_features=16),
    data=DataConfig(source="mnist", batch_size=32, eval_batch_size=200),
    train=TrainConfig(steps=20, log_every=5, eval_every=20, progress=False),
    checkpoint=CheckpointConfig(every=10, best_metric="nll_nats", best_mode="min"),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("gated_pixelcnn_mnist")
