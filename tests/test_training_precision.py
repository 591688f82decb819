"""Mixed-precision training through ``fusionnet_tf.training.run.train`` on a tiny model.

``mixed_bfloat16`` and ``mixed_float16`` (with Keras's ``LossScaleOptimizer``)
both run on the CPU, with BatchNormalization on the fused kernel in the
half-precision dtype, and both lower the training loss.
"""

import keras
import numpy as np
import pytest
import tifffile

from fusionnet_tf.training.config import config_from_dict
from fusionnet_tf.training.run import train

EPOCHS = 3
STEPS = 4


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    """Three 64 x 64 slices: dark membrane lines on a bright noisy background (ISBI labels)."""
    folder = tmp_path_factory.mktemp("stack")
    rng = np.random.default_rng(1)
    membrane = np.zeros((3, 64, 64), bool)
    for n in range(3):
        for row in rng.choice(60, 3, replace=False):
            membrane[n, row:row + 2, :] = True
        for col in rng.choice(60, 3, replace=False):
            membrane[n, :, col:col + 2] = True
    image = np.where(membrane, 60, 190) + rng.normal(0, 12, membrane.shape)
    tifffile.imwrite(folder / "img.tif", np.clip(image, 0, 255).astype(np.uint8))
    tifffile.imwrite(folder / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8))
    return folder / "img.tif", folder / "lab.tif"


def tiny_config(stack_files, output_dir, precision):
    images, labels = stack_files
    return config_from_dict({
        "model": {"base_filters": 4, "depth": 2, "residual_convs": 1},
        "data": {"train_images": str(images), "train_labels": str(labels),
                 "train_slices": "0-2", "tile_size": 32},
        "augment": False,
        "optimizer": {"learning_rate": 0.01},
        "epochs": EPOCHS, "steps_per_epoch": STEPS, "batch_size": 4,
        "precision": precision, "fused_batchnorm": True, "checkpoint_monitor": "loss",
        "output_dir": str(output_dir), "tensorboard": False,
    })


def batchnorm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("precision, compute_dtype", [("mixed_bfloat16", "bfloat16"),
                                                      ("mixed_float16", "float16")])
def test_mixed_precision_run_lowers_the_loss(stack_files, tmp_path, precision, compute_dtype):
    result = train(tiny_config(stack_files, tmp_path / "run", precision), verbose=0)
    model = result.model
    losses = result.history["loss"]
    assert len(losses) == EPOCHS and np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses
    # the run trained in the half-precision dtype, BatchNormalization on the fused path
    bns = batchnorm_layers(model)
    assert bns and all(bn.compute_dtype == compute_dtype for bn in bns)
    assert all(getattr(bn, "_fusionnet_patched", False) for bn in bns)
    assert all(bn.moving_variance.dtype == "float32" for bn in bns)
    assert model.output.dtype == "float32"
    # float16 only with loss scaling; bfloat16 has float32's range and needs none
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * STEPS
    if scaled:
        scale = float(model.optimizer.dynamic_scale.numpy())
        assert np.isfinite(scale) and scale >= 1.0
