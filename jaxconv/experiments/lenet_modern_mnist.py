"""Modern LeNet-5 (ReLU, max pooling, full C3, dropout) on the embedded MNIST, with augmentation and SGD.

Run: ``jaxconv train lenet_modern_mnist`` (or ``python -m jaxconv.experiments.lenet_modern_mnist``);
``--smoke`` for the tests' size. The network keeps LeNet-5's layer sizes (61,706 parameters); the
recipe is what a small CNN trained on 4,000 images needs today, each choice for a reason:

- Data augmentation (the largest gain: the plain recipe fits its 4,000 images exactly, training loss
  0.0009, while its validation loss rises): small affine distortions of handwriting (Simard et al.
  2003), drawn afresh for every image at every step: a turn by up to 10 degrees and a zoom by up to
  10% about the centre (``data.augment_rotate``, ``data.augment_scale``) for slant and size, then a
  shift by up to 2 pixels (``data.augment_crop_pad=2``) for position. No flips: a mirrored 2 or 7 is
  no digit.
- Dropout 0.25 on the outputs of the two hidden dense layers, C5 and F6 (``model.dropout``): where
  a modern CNN has it (AlexNet's fc6 and fc7); 0.25 rather than AlexNet's 0.5, as these layers have
  120 and 84 units, not 4,096.
- SGD with Nesterov momentum 0.9, learning rate 0.05, L2 weight decay 5e-4: the optimiser of modern
  image-classification recipes, which generalise better with it than with Adam (Wilson et al. 2017).
- Schedule and length: 100 linear warm-up steps, then cosine decay to 0; batch 64, 4,000 steps
  (64 epochs of the train split): augmented digits take longer to fit than the plain 1,500 steps.
- No label smoothing: the config has no such key (softmax cross-entropy on hard labels).

Chosen on held-out train images, never the validation split: 4-fold cross-validation on the train
split (``--set data.cv_fold=K``: train on 3,000, measure on the other 1,000), K = 0..3:

| candidate | seeds | CV accuracy (mean) |
|---|---|---|
| this recipe | 0, 1 | 98.58% (seed 0: 98.53%) |
| AdamW lr 2e-3, weight decay 0.05 in place of SGD | 0, 1 | 98.35% |
| SGD lr 0.1 | 0 | 98.53% |
| SGD weight decay 2e-3 | 0 | 98.45% |
| no dropout | 0 | 98.38% |
| dropout 0.4 | 0 | 98.35% |

SGD beat AdamW on 6 of the 8 (fold, seed) pairs, by 0.23 points on average. With AdamW, earlier: on one
fold (3 seeds) 98.9% against 97.9% with the same regularisation and no augmentation, and 97.7% for the
plain recipe; shifts alone 98.7%; 2,000 steps 98.7%, 6,000 98.9%. Simard et al.'s elastic distortion on
top (``data.augment_elastic=34``, 6,000 steps) gained 0.2 points in the cross-validation but lost 0.6 on
the validation split (97.8% mean of 3 seeds), so it is left out. Validation accuracy (train.seed 0, 1,
2): 98.4%, 98.4%, 98.7%; mean 98.5% (AdamW: 98.9%, 98.5%, 97.6%, mean 98.3%). All of these were measured
on two CPU devices with XLA's YNNPACK convs; with the defaults of 2026-11-30 (one device, Eigen convs,
other rounding) the recipe gets 98.4%, 99.1%, 98.3%; mean 98.6%.

The faithful 1998 network and its recipe are ``lenet_mnist``.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

CONFIG = Config(
    name="lenet_modern_mnist",
    model=dataclasses.replace(preset("lenet5_modern"), dropout=0.25),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200,
                    augment_rotate=10.0, augment_scale=0.1, augment_crop_pad=2),
    optim=OptimConfig(name="momentum", learning_rate=0.05, nesterov=True, weight_decay=5e-4),
    schedule=ScheduleConfig(name="cosine", warmup_steps=100),
    train=TrainConfig(steps=4000, log_every=100, eval_every=1000),
    checkpoint=CheckpointConfig(every=1000),
)

# The tests' size, and the plain sections (no augmentation, no dropout, Adam) that the tests which use
# it pin: e.g. one step giving the same parameters on 1 device, 8 devices and under pmap, where pmap
# draws each device's dropout masks and augmentations separately.
SMOKE = CONFIG.replace(
    model=preset("lenet5_modern"),
    data=DataConfig(source="mnist", batch_size=64, eval_batch_size=200),
    optim=OptimConfig(name="adam", learning_rate=2e-3),
    train=TrainConfig(steps=20, log_every=5, eval_every=10, progress=False),
    checkpoint=CheckpointConfig(every=10),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("lenet_modern_mnist")
