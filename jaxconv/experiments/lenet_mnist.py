"""LeNet-5 as in LeCun et al. 1998 (tanh-family, sum-pool subsampling, C3 table) on the embedded MNIST.

Run: ``jaxconv train lenet_mnist`` (or ``python -m jaxconv.experiments.lenet_mnist``); ``--smoke``
for the tests' size. Recipe: SGD with momentum 0.9, lr 0.05 with 100 warm-up steps then cosine decay,
batch 64, 3,000 steps (48 epochs of the 4,000-image train split).
"""

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="lenet_mnist",
    model=preset("lenet5"),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200),
    optim=OptimConfig(name="momentum", learning_rate=0.05, momentum=0.9),
    schedule=ScheduleConfig(name="cosine", warmup_steps=100),
    train=TrainConfig(steps=3000, log_every=100, eval_every=1000),
    checkpoint=CheckpointConfig(every=1000),
)

SMOKE = CONFIG.replace(
    train=TrainConfig(steps=20, log_every=5, eval_every=10, progress=False),
    checkpoint=CheckpointConfig(every=10),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("lenet_mnist")
