"""Modern LeNet-5 (ReLU, max pooling, full C3, softmax) on the embedded MNIST.

Run: ``jaxconv train lenet_modern_mnist`` (or ``python -m jaxconv.experiments.lenet_modern_mnist``);
``--smoke`` for the tests' size. Recipe: Adam, lr 2e-3 with 50 warm-up steps then cosine decay,
batch 64, 1,500 steps (24 epochs of the 4,000-image train split).
"""

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="lenet_modern_mnist",
    model=preset("lenet5_modern"),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200),
    optim=OptimConfig(name="adam", learning_rate=2e-3),
    schedule=ScheduleConfig(name="cosine", warmup_steps=50),
    train=TrainConfig(steps=1500, log_every=100, eval_every=500),
    checkpoint=CheckpointConfig(every=500),
)

SMOKE = CONFIG.replace(
    train=TrainConfig(steps=20, log_every=5, eval_every=10, progress=False),
    checkpoint=CheckpointConfig(every=10),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("lenet_modern_mnist")
