"""
Title: Training FusionNet for EM membrane segmentation
Author: fusionnet-tf contributors
Date created: 2026/11/22
Last modified: 2026/11/22
Description: Config -> ISBI 2012 datasets -> FusionNet -> compile -> fit.

Run from the repository root (relative paths resolve against the current
directory):

    python training/train.py --config training/configs/isbi2012.yaml --set epochs=5

This script spells out the steps; ``fusionnet train`` (and
``fusionnet_tf.training.train``) does the same and adds exact mid-epoch
resume after an interruption.
"""

import argparse

import keras

from fusionnet_tf.training import check_config, load_config
from fusionnet_tf.training import run as lib
from fusionnet_tf.training.strategy import global_batch_size, make_strategy, set_precision

"""
## Configuration

All hyperparameters live in a YAML file; ``--set key=value`` overrides one.
"""

parser = argparse.ArgumentParser(description="Train FusionNet from a config file.")
parser.add_argument("--config", default="training/configs/isbi2012.yaml",
                    help="YAML/JSON config (default: training/configs/isbi2012.yaml).")
parser.add_argument("--set", action="append", default=[], dest="overrides",
                    help="KEY=VALUE override, repeatable (default: none).")
args = parser.parse_args()

config = load_config(args.config, args.overrides)
check_config(config)  # paths, tile sizes, types: fail before any work
set_precision(config.precision)
strategy = make_strategy(config.strategy)
BATCH_SIZE = global_batch_size(config.batch_size, config.batch_size_is_global,
                               strategy.num_replicas_in_sync)
out = lib.prepare_output_dir(config)  # writes config.yaml

"""
## Data

Slices 0-19 train, 20-24 validate. Augmentation (elastic deformation,
dihedral transforms, intensity jitter) runs in the ``tf.data`` map, so it
overlaps with the training step and stays out of the exported model.
"""

arrays = lib.load_data(config)
keras.utils.set_random_seed(config.seed)
train_ds, val_ds = lib.make_datasets(config, arrays, BATCH_SIZE)

"""
## Model

FusionNet outputs float32 sigmoid membrane probabilities, so the losses take
probabilities (not logits).
"""

with strategy.scope():
    model = lib.build_and_compile(config)

"""
## Training

Checkpoints (``latest.keras``, ``best.keras``), CSV log, TensorBoard, NaN
guard and the training-curve PNG are callbacks; the backup callback lets a
re-run of this script continue from the last completed epoch.
"""

backup = keras.callbacks.BackupAndRestore(str(out / "backup_script"))
callbacks = lib.make_callbacks(config, out, chief=True, backup=backup)
model.fit(
    train_ds,
    validation_data=val_ds,
    epochs=config.epochs,
    steps_per_epoch=config.steps_per_epoch,
    validation_steps=config.validation_steps,
    callbacks=callbacks,
)

"""
## Inference

The best checkpoint is a plain ``.keras`` file:

    model = keras.models.load_model("runs/isbi2012/best.keras", compile=False)
    from fusionnet_tf import Predictor
    probabilities = Predictor(model, tile_shape=512, tta=8).predict(images)
"""
print(f"done: {out / 'best.keras'}")
