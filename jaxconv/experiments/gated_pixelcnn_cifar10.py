"""Gated PixelCNN on CIFAR-10 (van den Oord et al. 2016b: 3.03 bits/dim), read through TFDS.

Run: ``jaxconv train gated_pixelcnn_cifar10 --set data.path=TFDS_DATA_DIR`` with CIFAR-10 prepared by
TFDS in that directory; ``--smoke`` trains a tiny model on synthetic 32x32x3 images (no data needed).
Model, as the paper: 20 gated layers, 384 feature maps, 5x5 kernels, no dilation, a 256-way softmax
per colour channel (R->G->B), unconditional (``--set model.num_classes=10`` conditions on the class).
The paper does not state its optimiser settings; ours: Adam 3e-4 with gradient clipping at 1,
1,000 warm-up steps then cosine decay, batch 64, 200,000 steps (256 epochs of the 50k images).
This is a GPU experiment: the model has 122M parameters.
"""


from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.experiments import gated_pixelcnn_imagenet32
from jaxconv.models import preset

CONFIG = Config(
    name="gated_pixelcnn_cifar10",
    model=preset("gated_pixelcnn_imagenet32"),
    data=DataConfig(source="tfds:cifar10", pixels="uint8", batch_size=64, eval_batch_size=500),
    optim=OptimConfig(name="adam", learning_rate=3e-4, grad_clip_norm=1.0),
    schedule=ScheduleConfig(name="cosine", warmup_steps=1000),
    train=TrainConfig(steps=200_000, log_every=200, eval_every=10_000, dtype="bfloat16"),
    checkpoint=CheckpointConfig(every=5000, best_metric="bits_per_dim", best_mode="min"),
)

# The same network and synthetic 32x32x3 smoke as gated_pixelcnn_imagenet32's, under this name.
SMOKE = gated_pixelcnn_imagenet32.SMOKE.replace(name=CONFIG.name)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("gated_pixelcnn_cifar10")
