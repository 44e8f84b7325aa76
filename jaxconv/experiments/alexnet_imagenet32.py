"""AlexNet-32 on ImageNet32 (Chrabaszcz et al. 2017): 1000 classes, top-1 and top-5 accuracy.

Run, with the official ImageNet32 npz download in SRC::

    jaxconv data prepare imagenet32 --src SRC --out data/imagenet32
    jaxconv train alexnet_imagenet32
    jaxconv eval runs/alexnet_imagenet32      # best checkpoint: loss, accuracy (top-1), top5_accuracy

``--smoke`` trains a narrow model on synthetic 32x32x3 images of 1000 classes (no data needed).
Model: ``alexnet32`` (jaxconv/models/alexnet.py): AlexNet's 96/256/384/384/256 channels in one tower
for 32x32 inputs, two hidden dense layers of 2048 with dropout 0.5, He init; 14,685,544 parameters.

Recipe, from the training script the ImageNet32 paper released for its WRN baselines
(github.com/PatrykChrabaszcz/Imagenet32_Scripts, ``WRNs_imagenet.py``): SGD with momentum 0.9, batch
128, learning rate 0.01 multiplied by 0.2 after epochs 10, 20 and 30 of 40, weight decay 5e-4, random
crops of the image padded by 4 pixels, horizontal flips. Their epoch is a pass over every training
image *and* its mirror image (each file is doubled with flipped copies), 2 x 1,281,167 images, so
with random flips we take about as many steps as their 40 epochs (40 x 2 x 1,281,167 / 128 = 800,729):
80 passes over the 1.28M images of 10,009 steps each (1,281,167 // 128) = 800,720 steps of 128, the
decays after passes 20, 40 and 60 (steps 200,180, 400,360 and 600,540). Where we differ, and why:

- weight decay as AlexNet's update rule (the gradient plus 5e-4 * w, every parameter); their script
  adds 5e-4 * sum(w^2) over the weights to the loss (a gradient of 1e-3 * w);
- their script subtracts the train split's mean image; ``alexnet32`` centres its input itself (x minus
  the ImageNet mean RGB / 255), so ``data.subtract_mean`` stays off (it would centre twice) and the
  4-pixel crop padding is black (torchvision's ``RandomCrop(32, padding=4)``), theirs the mean colour;
- dropout 0.5 on fc6 and fc7 and the paper-sized channels are AlexNet's (the WRNs have no dropout).

Evaluation: all 50,000 validation images, one central view, after every pass (10,009 steps); the
checkpoint with the best top-1 accuracy is kept besides the latest two. ``jaxconv eval`` prints loss,
accuracy (top-1) and top5_accuracy.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

STEPS_PER_PASS = 1_281_167 // 128  # 10,009

CONFIG = Config(
    name="alexnet_imagenet32",
    model=preset("alexnet32"),
    data=DataConfig(source="imagenet32", path="data/imagenet32", batch_size=128, eval_batch_size=500,
                    augment_crop_pad=4, augment_flip=True),
    optim=OptimConfig(name="momentum", learning_rate=0.01, momentum=0.9, weight_decay=5e-4),
    schedule=ScheduleConfig(name="step", boundaries=tuple(STEPS_PER_PASS * p for p in (20, 40, 60)),
                            decay_factor=0.2),
    train=TrainConfig(steps=80 * STEPS_PER_PASS, log_every=500, eval_every=STEPS_PER_PASS),
    checkpoint=CheckpointConfig(every=STEPS_PER_PASS, best_metric="accuracy", best_mode="max"),
)

SMOKE = CONFIG.replace(
    model=dataclasses.replace(CONFIG.model, width=0.125),
    data=dataclasses.replace(CONFIG.data, source="synthetic", path="", image_shape=(32, 32, 3), num_classes=1000,
                             num_examples=64, batch_size=16, eval_batch_size=16),
    schedule=dataclasses.replace(CONFIG.schedule, boundaries=(2,)),
    train=TrainConfig(steps=4, log_every=2, eval_every=4, progress=False),
    checkpoint=CheckpointConfig(every=2, best_metric="accuracy", best_mode="max"),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("alexnet_imagenet32")
