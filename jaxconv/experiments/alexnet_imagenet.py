"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) on the full ImageNet at 224x224, from TFDS imagenet2012.

Run, with ``imagenet2012`` prepared in array_record format in the TFDS data_dir DATA_DIR (preparing
needs TensorFlow once, and ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org in
MANUAL_DIR)::

    tfds build imagenet2012 --data_dir DATA_DIR --manual_dir MANUAL_DIR --file_format array_record
    jaxconv train alexnet_imagenet --set data.path=DATA_DIR
    jaxconv eval runs/alexnet_imagenet        # best checkpoint: loss, accuracy (top-1), top5_accuracy

(An empty ``data.path`` means ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.) The first run
decodes each split once, without TensorFlow, into ``DATA_DIR/jaxconv_cache/`` at 256x256
(252 GB for the 1,281,167 training images, 9.8 GB for the 50,000 validation images; later runs
memory-map it). ``--smoke`` trains a narrow net on synthetic 256x256 images (no data needed).

Model: ``alexnet``, the paper's two-tower network (jaxconv/models/alexnet.py): LRN, overlapping
pooling, dropout 0.5 on fc6 and fc7, weights N(0, 0.01) and biases 1 in conv2/4/5, fc6 and fc7;
60,965,224 parameters.

Data, as the paper (sections 2 and 4.1): every image's shorter side scaled to 256 and the central
256x256 kept (``data.image_size=256``); training on random 224x224 patches (``data.crop_size=224``)
and their horizontal reflections (``data.augment_flip``); the mean subtraction is the model's (the
ImageNet mean RGB, per channel, the usual stand-in for the paper's mean image), so
``data.subtract_mean`` stays off. Not reproduced: the PCA colour augmentation (section 4.1) and the
ten-patch test-time average (four corners and centre, and their reflections); evaluation is on the
central 224x224 patch alone, so its errors are not the paper's ten-patch ones.

Recipe, the paper's section 5: SGD, batch 128, momentum 0.9, weight decay 5e-4 (its update adds
5e-4 * w to the gradient), learning rate 0.01 divided by 10 whenever the validation error stopped
improving, three times, in about 90 passes over the 1.2 million training images. Our choice: the
divisions at fixed epochs 30, 60 and 80 of 90 (an epoch is 1,281,167 // 128 = 10,009 steps): steps
300,270, 600,540 and 800,720 of 900,810. Float32 (``--set train.dtype=bfloat16`` for speed).
Evaluation on the 50,000 validation images every epoch; the best top-1 checkpoint is kept.
"""

import dataclasses

from jaxconv.config import CheckpointConfig, Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from jaxconv.models import preset

STEPS_PER_EPOCH = 1_281_167 // 128  # 10,009

CONFIG = Config(
    name="alexnet_imagenet",
    model=preset("alexnet"),
    data=DataConfig(source="tfds:imagenet2012", path="", image_size=256, crop_size=224, augment_flip=True,
                    batch_size=128, eval_batch_size=500),
    optim=OptimConfig(name="momentum", learning_rate=0.01, momentum=0.9, weight_decay=5e-4),
    schedule=ScheduleConfig(name="step", boundaries=tuple(STEPS_PER_EPOCH * e for e in (30, 60, 80)),
                            decay_factor=0.1),
    train=TrainConfig(steps=90 * STEPS_PER_EPOCH, log_every=500, eval_every=STEPS_PER_EPOCH),
    checkpoint=CheckpointConfig(every=STEPS_PER_EPOCH, best_metric="accuracy", best_mode="max"),
)

SMOKE = CONFIG.replace(
    model=dataclasses.replace(CONFIG.model, width=1 / 16),
    data=dataclasses.replace(CONFIG.data, source="synthetic", image_size=0, image_shape=(256, 256, 3),
                             num_classes=1000, num_examples=16, batch_size=4, eval_batch_size=4),
    schedule=dataclasses.replace(CONFIG.schedule, boundaries=(1,)),
    train=TrainConfig(steps=2, log_every=1, eval_every=2, progress=False),
    checkpoint=CheckpointConfig(every=1, best_metric="accuracy", best_mode="max"),
)

if __name__ == "__main__":
    from jaxconv.cli import run_experiment_module

    run_experiment_module("alexnet_imagenet")
