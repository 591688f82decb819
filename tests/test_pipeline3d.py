"""3D patch pipeline: EM defects, elastic warp of ids, targets after augmentation, training run."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
import tifffile

from fusionnet_tf.data import pipeline3d as p3
from fusionnet_tf.data.affinities import affinity_targets

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3, 0))


def blocky_volume(shape=(6, 96, 96), cell=12, seed=0):
    """Instance ids on a grid of cells (ids up to ~1000, so interpolation would invent new ones)."""
    rng = np.random.default_rng(seed)
    grid = rng.choice(np.arange(1, 1000), size=(shape[0] // 2 + 1, shape[1] // cell + 1,
                                                 shape[2] // cell + 1))
    labels = grid.repeat(2, 0).repeat(cell, 1).repeat(cell, 2)[:shape[0], :shape[1], :shape[2]]
    labels = labels.astype(np.uint16)
    labels[:, ::cell, :] = 0  # thin boundaries
    image = (0.2 + 0.6 * (labels % 7) / 6.0).astype(np.float32)
    return image, labels


def smooth_image(shape=(5, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random(shape).astype(np.float32))


# ---------------------------------------------------------------- EM defects


def test_missing_section_is_constant_and_alone():
    image = smooth_image()
    out = p3.missing_section(image, tf.constant(2)).numpy()
    assert (out[2] == 0).all()
    np.testing.assert_array_equal(np.delete(out, 2, 0), np.delete(image.numpy(), 2, 0))


def test_misalignment_shifts_only_sections_at_and_after_z():
    image = smooth_image()
    out = p3.misalign_block(image, tf.constant(3), tf.constant(2), tf.constant(-4)).numpy()
    src = image.numpy()
    np.testing.assert_array_equal(out[:3], src[:3])
    # content moved by (+2, -4): out[z, y, x] = src[z, y - 2, x + 4] inside the patch
    np.testing.assert_array_equal(out[3:, 2:, :-4], src[3:, :-2, 4:])
    assert not np.array_equal(out[3:], src[3:])


def test_low_contrast_section():
    image = smooth_image()
    out = p3.low_contrast_section(image, tf.constant(1), 0.25).numpy()
    src = image.numpy()
    assert out[1].std() == pytest.approx(0.25 * src[1].std(), rel=1e-4)
    assert out[1].mean() == pytest.approx(src[1].mean(), rel=1e-4)
    np.testing.assert_array_equal(np.delete(out, 1, 0), np.delete(src, 1, 0))


def test_blurred_section():
    image = smooth_image()
    out = p3.blur_section(image, tf.constant(4), tf.constant(2.0), 6).numpy()
    src = image.numpy()
    assert np.abs(np.diff(out[4], axis=1)).mean() < 0.5 * np.abs(np.diff(src[4], axis=1)).mean()
    np.testing.assert_array_equal(out[:4], src[:4])


def test_fold_is_a_dark_line_on_one_section():
    image = tf.ones((3, 32, 32))
    out = p3.fold_section(image, tf.constant(1), 16.0, 16.0, tf.constant(0.0), 3.0).numpy()
    # angle 0: the line is horizontal through row 16, rows 15-17 dark
    assert (out[1, 15:18] == 0).all() and (out[1, :14] == 1).all() and (out[1, 19:] == 1).all()
    assert (out[0] == 1).all() and (out[2] == 1).all()


def test_defects_touch_the_image_only():
    image, labels = blocky_volume((6, 64, 64))
    config = dataclasses.replace(p3.Augment3DConfig.none(), missing_section=1.0, misalign=1.0,
                                 low_contrast=1.0, blur_section=1.0, fold=1.0)
    out_image, out_labels = p3.augment_patch(tf.constant(image), tf.constant(labels.astype("int32")),
                                             tf.constant([1, 2]), config, (6, 64, 64))
    np.testing.assert_array_equal(out_labels.numpy(), labels)
    assert not np.allclose(out_image.numpy(), image)
    assert (out_image.numpy() == 0).all(axis=(1, 2)).any()   # the missing section


# ---------------------------------------------------------------- geometry and targets


def test_elastic_warp_keeps_label_ids_and_uses_one_field_for_all_sections():
    image, labels = blocky_volume((4, 96, 96))
    labels[:] = labels[0]      # identical sections
    image[:] = image[0]
    config = dataclasses.replace(p3.Augment3DConfig.none(), elastic=True,
                                 elastic_displacement=4.0)
    margin = config.as_2d().margin
    size = 96 - 2 * margin
    out_image, out_labels = p3.augment_patch(tf.constant(image), tf.constant(labels.astype("int32")),
                                             tf.constant([3, 4]), config, (4, size, size))
    out_labels = out_labels.numpy()
    assert set(np.unique(out_labels)) <= set(np.unique(labels))
    crop = labels[:, margin:margin + size, margin:margin + size]
    assert (out_labels != crop).mean() > 0.01     # the warp did move things
    for z in range(1, 4):
        np.testing.assert_array_equal(out_labels[z], out_labels[0])
        np.testing.assert_allclose(out_image.numpy()[z], out_image.numpy()[0])


def make_stream(**kwargs):
    image, labels = blocky_volume()
    defaults = dict(offsets=OFFSETS, augment=p3.Augment3DConfig(elastic_displacement=2.0), seed=3,
                    with_labels=True)
    return p3.train_dataset_3d(image, labels, (4, 32, 32), 2, **{**defaults, **kwargs})


def test_targets_are_computed_from_the_augmented_labels():
    source_ids = set(np.unique(blocky_volume()[1]))
    for _, packed, labels in make_stream().take(3):
        assert packed.shape == (2, 4, 32, 32, 2 * len(OFFSETS))
        for b in range(2):
            affs, mask = affinity_targets(labels[b].numpy(), OFFSETS)
            np.testing.assert_array_equal(packed[b].numpy(),
                                          np.concatenate([np.moveaxis(affs, 0, -1),
                                                          np.moveaxis(mask, 0, -1)], -1))
            assert set(np.unique(labels[b].numpy())) <= source_ids


def test_flips_move_image_and_labels_together():
    # without elastic, intensity and defects, the image is a function of the ids
    config = dataclasses.replace(p3.Augment3DConfig.none(), dihedral=True, z_flip=True)
    for image, _, labels in make_stream(augment=config).take(4):
        code = (0.2 + 0.6 * (labels.numpy() % 7) / 6.0).astype(np.float32)
        np.testing.assert_allclose(image.numpy()[..., 0], code, atol=1e-6)


def test_stream_is_reproducible_and_resumable():
    first = [x.numpy() for x, _, _ in make_stream().take(3)]
    resumed = [x.numpy() for x, _, _ in make_stream(start_batch=2).take(1)]
    np.testing.assert_array_equal(resumed[0], first[2])
    assert not np.array_equal(first[0], first[1])


def test_validation_patches_tile_the_volume():
    image, labels = blocky_volume((6, 64, 64))
    origins = p3.validation_origins((6, 64, 64), (4, 32, 32))
    assert len(origins) == 2 * 2 * 2
    assert {tuple(o) for o in origins} >= {(0, 0, 0), (2, 32, 32)}
    batches = list(p3.validation_dataset_3d(image, labels, (4, 32, 32), 3, offsets=OFFSETS))
    assert sum(int(x.shape[0]) for x, _ in batches) == 8


def test_augment_config_checks():
    with pytest.raises(ValueError, match="misalign"):
        p3.Augment3DConfig(misalign=1.5)
    with pytest.raises(ValueError, match="unknown augmentation"):
        p3.as_augment3d_config({"missing": 0.1})
    with pytest.raises(ValueError, match="patch_shape"):
        p3.check_patch_shape((4, 32, 16))


# ---------------------------------------------------------------- config and training run


def test_shipped_config_loads_and_checks():
    from fusionnet_tf.training.config import check_config_3d, load_config

    config = load_config("training/configs/snemi3d_affinities.yaml")
    assert config.model.architecture == "fusionnet3d"
    assert config.data.train_slices == "0-59" and config.data.val_slices == "60-74"
    check_config_3d(config)


@pytest.mark.parametrize("override, match", [
    ({"data": {"patch_shape": [5, 32, 32]}}, "patch_shape"),
    ({"data": {"patch_shape": [4, 30, 30]}}, "patch_shape"),
    ({"loss": {"name": "weighted_bce"}}, "loss.name"),
    ({"augment": {"fold": 2.0}}, "augment"),
    ({"data": {"offsets": [[0, 0]]}}, "data.offsets"),
])
def test_bad_3d_config_is_refused(volume_files, tmp_path, override, match):
    from fusionnet_tf.training.config import check_config

    config = tiny_config(volume_files, tmp_path / "run", override)
    with pytest.raises(ValueError, match=match):
        check_config(config)


@pytest.fixture(scope="module")
def volume_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vol")
    image, labels = blocky_volume((8, 64, 64))
    tifffile.imwrite(folder / "raw.tif", (image * 255).astype(np.uint8))
    tifffile.imwrite(folder / "labels.tif", labels)
    return folder / "raw.tif", folder / "labels.tif"


def tiny_config(files, output_dir, override=None):
    from fusionnet_tf.training.config import config_from_dict

    mapping = {
        "model": {"architecture": "fusionnet3d", "base_filters": 2, "depth": 2,
                  "anisotropic_levels": 1, "residual_convs": 1},
        "data": {"train_images": str(files[0]), "train_labels": str(files[1]),
                 "train_slices": "0-5", "val_slices": "4-7", "patch_shape": [4, 32, 32],
                 "offsets": [list(o) for o in OFFSETS]},
        "augment": {"elastic_displacement": 1.0},
        "optimizer": {"learning_rate": 0.01},
        "epochs": 2, "steps_per_epoch": 1, "batch_size": 1, "validation_steps": 1,
        "backup_every_steps": 1, "output_dir": str(output_dir), "tensorboard": False,
    }
    for key, value in (override or {}).items():
        mapping[key] = {**mapping.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(mapping)


class StopAtSecondStep(keras.callbacks.Callback):
    """Raise at the end of the second step, before its backup (the first one is backed up)."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == 2:
            raise KeyboardInterrupt("killed in step 2")


def test_two_step_run_resumes_after_a_kill(volume_files, tmp_path):
    from fusionnet_tf.training import callbacks as cb
    from fusionnet_tf.training.run import train

    config = tiny_config(volume_files, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[StopAtSecondStep()], verbose=0)
    assert cb.read_backup_state(tmp_path / "run" / "backup")["global_step"] == 1
    keras.backend.clear_session()
    result = train(config, verbose=0)
    assert (result.initial_epoch, result.initial_step) == (1, 0)
    assert int(result.model.optimizer.iterations.numpy()) == 2
    assert result.history["epoch"] == [0.0, 1.0]
    assert {"loss", "val_loss", "accuracy"} <= set(result.history)
    model = keras.models.load_model(result.latest_path, compile=False)
    assert model.output_shape == (None, None, None, None, len(OFFSETS))
    # The run records its offsets beside the checkpoints, where Predictor finds them.
    from fusionnet_tf.inference.predictor import read_model_offsets

    for path in (result.latest_path, result.best_path):
        assert [tuple(o) for o in read_model_offsets(path)] == [tuple(o) for o in OFFSETS]


def test_masked_affinity_loss_ignores_pairs_outside_the_patch():
    from fusionnet_tf.training.losses import MaskedAffinityLoss, get_affinity_loss

    affs = np.zeros((1, 2, 4, 4, 2), np.float32)
    mask = np.ones_like(affs)
    mask[:, 0] = 0                                 # first section masked out
    pred = np.full_like(affs, 0.1)
    pred[:, 0] = 0.99                              # badly wrong, but only where masked
    y_true = np.concatenate([affs, mask], -1)
    bce = MaskedAffinityLoss(1.0, 0.0)(y_true, pred)
    assert float(bce) == pytest.approx(-np.log(0.9), rel=1e-5)
    dice = get_affinity_loss("dice", smooth=1.0)(y_true, pred)
    inter, total = 0.0, 0.1 * 32
    assert float(dice) == pytest.approx(1 - (2 * inter + 1) / (total + 1), rel=1e-5)
    with pytest.raises(ValueError, match="weighted_bce"):
        get_affinity_loss("weighted_bce")
