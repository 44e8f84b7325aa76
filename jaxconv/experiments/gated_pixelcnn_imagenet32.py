"""Gated PixelCNN on ImageNet32 (van den Oord et al. 2016b: 3.83 bits/dim), unlabelled density model.

Run, with the official ImageNet32 npz download in SRC::

    jaxconv data prepare imagenet32 --src SRC --out data/imagenet32
    jaxconv train gated_pixelcnn_imagenet32

``--smoke`` trains a tiny model on synthetic 32x32x3 images (no data needed).
Model, as the paper: 20 gated layers, 384 feature maps, 5x5 kernels, no dilation, a 256-way softmax
per colour channel (R->G->B); 122M parameters (the paper trained it for 60 hours on 32 GPUs).
The paper does not state its optimiser settings; ours: Adam 3e-4 with gradient clipping at 1,
2,000 warm-up steps then cosine decay, batch 128, 300,000 steps (30 epochs of the 1.28M images),
bf16 compute with float32 master weights.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="gated_pixelcnn_imagenet32",
    model=preset("gated_pixelcnn_imagenet32"),
    data=DataConfig(source="imagenet32", path="data/imagenet32", pixels="uint8", batch_size=128,
                    eval_batch_size=500),
    optim=OptimConfig(name="adam", learning_rate=3e-4, grad_clip_norm=1.0),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2000),
    train=TrainConfig(steps=300_000, log_every=200, eval_every=20_000, dtype="bfloat16"),
    checkpoint=CheckpointConfig(every=5000, best_metric="bits_per_dim", best_mode="min"),
)

SMOKE = CONFIG.replace(
    model=dataclasses.replace(CONFIG.model, features=8, num_layers=2, kernel=3, output_features=32),
    data=DataConfig(source="synthetic", pixels="uint8", image_shape=(32, 32, 3), num_examples=256,
                    batch_size=16, eval_batch_size=64),
    train=TrainConfig(steps=6, log_every=2, eval_every=6, progress=False),
    checkpoint=CheckpointConfig(every=3, best_metric="bits_per_dim", best_mode="min"),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("gated_pixelcnn_imagenet32")
