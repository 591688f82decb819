"""The 3D affinity parts of ``fusionnet_tf.training.run`` (``model.architecture: fusionnet3d``).

``run.train`` dispatches here for data, datasets and the model; the run
folder, resume, callbacks, backups, precision and ``tf.distribute`` are the
2D machinery unchanged. Raw volumes are normalized once when loaded
(``data.normalization``); labels are instance ids (``read_instance_labels``,
no binarization); targets are affinities computed after augmentation.
"""

from fusionnet_tf.training import config as config_lib


def load_split(images_spec, labels_spec, slices, key, data):
    """Read one split, keep the selected sections and normalize the raw volume.

    Returns:
        (images float32 (Z, Y, X) in [0, 1], labels integer (Z, Y, X) ids).

    Raises:
        ValueError: images and labels of different shapes, bad slices, float labels.
    """
    import numpy as np

    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.data.affinities import read_instance_labels

    images = read_stack(images_spec)
    labels = read_instance_labels(labels_spec)
    if images.shape != labels.shape:
        raise ValueError(f"images {images_spec} have shape {images.shape} but labels "
                         f"{labels_spec} have shape {labels.shape}")
    index = config_lib.parse_slices(slices, images.shape[0], key=key)
    return (normalize(np.asarray(images[index]), mode=data.normalization).astype(np.float32),
            np.asarray(labels[index]))


def make_train_stream(config, arrays, batch_size, start_batch=0):
    """The endless 3D training dataset, starting at batch ``start_batch``."""
    from fusionnet_tf.data.pipeline3d import train_dataset_3d

    return train_dataset_3d(arrays[0], arrays[1], config.data.patch_shape, batch_size,
                            offsets=config_lib.affinity_offsets(config),
                            augment=config_lib.check_augment(config.augment, volume=True),
                            seed=config.seed, start_batch=start_batch)


def make_validation_dataset(config, arrays, batch_size):
    """Non-augmented patches tiling the validation volume, or None without validation."""
    from fusionnet_tf.data.pipeline3d import validation_dataset_3d

    if arrays[2] is None:
        return None
    return validation_dataset_3d(arrays[2], arrays[3],
                                 config.data.val_patch_shape or config.data.patch_shape,
                                 batch_size, offsets=config_lib.affinity_offsets(config))


def train_element_spec(config, batch_size):
    """(image, packed target) specs of the training stream, without building it."""
    import tensorflow as tf

    shape = (batch_size, *config.data.patch_shape)
    channels = len(config_lib.affinity_offsets(config))
    return (tf.TensorSpec((*shape, 1), tf.float32), tf.TensorSpec((*shape, 2 * channels), tf.float32))


def build_model(config):
    """The uncompiled fusionnet3d of ``config.model`` with one output channel per offset."""
    from fusionnet_tf.models import build_model as build

    m = config.model
    return build(m.architecture, base_filters=m.base_filters, depth=m.depth,
                 residual_convs=m.residual_convs, dropout=m.dropout,
                 normalization=m.normalization, anisotropic_levels=m.anisotropic_levels,
                 out_channels=len(config_lib.affinity_offsets(config)))


def loss_and_metrics(config):
    """The masked affinity loss and the masked accuracy metric."""
    from fusionnet_tf.training.fit_metrics import affinity_fit_metrics
    from fusionnet_tf.training.losses import get_affinity_loss

    return (get_affinity_loss(config.loss.name, dice_weight=config.loss.dice_weight,
                              smooth=config.loss.smooth), affinity_fit_metrics())


def write_offsets_sidecars(config, out):
    """Record the affinity offsets beside the run's checkpoints for inference.

    Writes ``latest.offsets.json`` and ``best.offsets.json`` in ``out``
    (``{"offsets": [[dz, dy, dx], ...]}``), which ``Predictor`` reads beside
    ``latest.keras`` / ``best.keras``.
    """
    import json

    from fusionnet_tf.io.outputs import atomic_path

    text = json.dumps({"offsets": [list(map(int, o)) for o in config_lib.affinity_offsets(config)]})
    for name in ("latest", "best"):
        with atomic_path(out / f"{name}.offsets.json") as tmp:
            tmp.write_text(text)
