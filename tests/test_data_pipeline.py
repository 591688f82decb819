"""tf.data training / validation pipelines and the elastic deformation."""

import dataclasses

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tifffile

from fusionnet_tf.data import (AugmentConfig, LazyStack, isbi2012_datasets, normalize, open_stack,
                               train_dataset, validation_dataset, validation_tile_origins)
from fusionnet_tf.data.augment import (bilinear_blend, bilinear_corners, coarse_displacements,
                                       elastic_field, gather_corners, sampling_coordinates,
                                       spline_basis)
from fusionnet_tf.data.pipeline import _warp, reflect_index
from fusionnet_tf.dihedral import dihedral_tf

NO_AUG = AugmentConfig.none()
ELASTIC_ONLY = AugmentConfig(elastic=True, elastic_grid=4, elastic_displacement=3.0,
                             dihedral=False, gamma=0, contrast=0, brightness=0, noise=0)


def take(dataset, batches):
    """The first ``batches`` batches as two stacked NumPy arrays."""
    images, labels = [], []
    for image, label in dataset.take(batches):
        images.append(image.numpy())
        labels.append(label.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def volume():
    """3 uint8 slices of 40 x 48 with different ranges, and random binary labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(20, 200, (3, 40, 48)).astype(np.uint8)
    images[1] //= 2
    labels = (rng.random((3, 40, 48)) < 0.3).astype(np.uint8)
    return images, labels


def find_crop(tile, slices):
    """Return (n, y, x) where ``tile`` (T, T) occurs exactly in ``slices`` (N, H, W), else None."""
    size = tile.shape[0]
    for n, plane in enumerate(slices):
        for y in range(plane.shape[0] - size + 1):
            for x in range(plane.shape[1] - size + 1):
                if np.array_equal(plane[y:y + size, x:x + size], tile):
                    return n, y, x
    return None


def smooth_image(size, seed=0):
    """A smooth float32 image in [0, 1]: a sum of random low-frequency sinusoids."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = sum(np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * y + rng.uniform(0.5, 1.5) * x) + rng.uniform(0, 6))
                for _ in range(3))
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


# --------------------------------------------------------------------------- #
# Exact crops, reflection, shapes
# --------------------------------------------------------------------------- #


def test_no_augmentation_gives_exact_crops(volume):
    images, labels = volume
    expected = normalize(images)
    tiles, tile_labels = take(train_dataset(images, labels, 16, 4, augment=False, seed=3), 3)
    assert tiles.shape == (12, 16, 16, 1) and tiles.dtype == np.float32
    assert tile_labels.shape == (12, 16, 16, 1) and tile_labels.dtype == np.float32
    for tile, label in zip(tiles[..., 0], tile_labels[..., 0]):
        where = find_crop(tile, expected)
        assert where is not None
        n, y, x = where
        np.testing.assert_array_equal(label, labels[n, y:y + 16, x:x + 16])
    # AugmentConfig.none() is the same as augment=False
    np.testing.assert_array_equal(take(train_dataset(images, labels, 16, 4, augment=NO_AUG, seed=3), 3)[0],
                                  tiles)


def test_tile_larger_than_slice_is_reflect_padded(volume):
    images, labels = volume
    expected = normalize(images)
    tiles, tile_labels = take(train_dataset(images[:1, :20, :20], labels[:1, :20, :20], 28, 2,
                                            augment=False, seed=0), 4)
    padded = np.pad(expected[:1, :20, :20], ((0, 0), (8, 8), (8, 8)), mode="reflect")
    padded_labels = np.pad(labels[:1, :20, :20], ((0, 0), (8, 8), (8, 8)), mode="reflect")
    for tile, label in zip(tiles[..., 0], tile_labels[..., 0]):
        _, y, x = find_crop(tile, padded)
        np.testing.assert_array_equal(label, padded_labels[0, y:y + 28, x:x + 28])


def test_reflect_index():
    got = reflect_index(np.arange(-3, 8), 4)
    np.testing.assert_array_equal(got, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1])
    np.testing.assert_array_equal(reflect_index(np.arange(-2, 3), 1), [0, 0, 0, 0, 0])


def warp_window(window, field, margin):
    """Reference deformation for the tests: sample a (S, S, C) window at
    ``tile pixel + margin + field`` (bilinear), from a (T, T, 2) field instead of
    the pipeline's ``sampling_coordinates``. Sample points are clamped to the window.
    """
    size = field.shape[0]
    side = window.shape[0]
    channels = window.shape[-1]
    base = tf.range(size, dtype=tf.float32) + float(margin)
    y = tf.clip_by_value(base[:, None] + field[..., 0], 0.0, side - 1.001)
    x = tf.clip_by_value(base[None, :] + field[..., 1], 0.0, side - 1.001)
    index, wy, wx = bilinear_corners(y, x, side)
    flat = tf.reshape(window, [side * side, channels])
    corners = gather_corners(flat, tf.reshape(index, [-1]), side)
    planes = bilinear_blend(*corners, tf.reshape(wy, [-1]), tf.reshape(wx, [-1]))
    return tf.transpose(tf.reshape(planes, [channels, size, size]), [1, 2, 0])


def test_default_augmentation_output_ranges(volume):
    images, labels = volume
    tiles, tile_labels = take(train_dataset(images, labels, 32, 4, seed=1), 2)
    assert tiles.shape == (8, 32, 32, 1)
    assert tiles.min() >= 0.0 and tiles.max() <= 1.0
    assert set(np.unique(tile_labels)) <= {0.0, 1.0}
    dataset = train_dataset(images, labels, 32, 4)
    assert dataset.element_spec[0].shape == (4, 32, 32, 1)


# --------------------------------------------------------------------------- #
# Reproducibility
# --------------------------------------------------------------------------- #


def test_same_seed_same_tiles_different_seed_different_tiles(volume):
    images, labels = volume
    first = take(train_dataset(images, labels, 24, 4, seed=7), 3)
    again = take(train_dataset(images, labels, 24, 4, seed=7), 3)
    other = take(train_dataset(images, labels, 24, 4, seed=8), 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.allclose(first[0], other[0])
    # tiles within one stream differ from each other too
    assert len({tile.tobytes() for tile in first[0]}) == len(first[0])


def test_start_batch_equals_skipping_batches(volume):
    images, labels = volume
    skipped = train_dataset(images, labels, 24, 4, seed=7).skip(5)
    started = train_dataset(images, labels, 24, 4, seed=7, start_batch=5)
    for (a_image, a_label), (b_image, b_label) in zip(skipped.take(2), started.take(2)):
        np.testing.assert_array_equal(a_image.numpy(), b_image.numpy())
        np.testing.assert_array_equal(a_label.numpy(), b_label.numpy())
    with pytest.raises(ValueError, match="`start_batch` must be an integer >= 0; received start_batch=-1"):
        train_dataset(images, labels, 24, 4, start_batch=-1)


# --------------------------------------------------------------------------- #
# The deformation field
# --------------------------------------------------------------------------- #


def fields_from_ramps(seed, tiles, size=64, config=ELASTIC_ONLY):
    """Recover (dy, dx) of each tile by deforming linear ramps.

    With tile size == slice size the tile origin is always (0, 0), and
    bilinear sampling of a linear ramp is exact, so ``output * (size - 1) -
    coordinate`` is the displacement (away from the reflected border).
    """
    ramp = np.arange(size, dtype=np.float32) / (size - 1)
    ramp_x = np.broadcast_to(ramp[None, None, :], (1, size, size)).copy()
    ramp_y = np.ascontiguousarray(np.transpose(ramp_x, (0, 2, 1)))
    labels = np.zeros((1, size, size), np.uint8)
    out_x, _ = take(train_dataset(ramp_x, labels, size, tiles, augment=config, seed=seed,
                                  normalization=None), 1)
    out_y, _ = take(train_dataset(ramp_y, labels, size, tiles, augment=config, seed=seed,
                                  normalization=None), 1)
    inner = slice(size // 4, 3 * size // 4)
    coords = np.arange(size, dtype=np.float32)
    dx = out_x[:, inner, inner, 0] * (size - 1) - coords[None, None, inner]
    dy = out_y[:, inner, inner, 0] * (size - 1) - coords[None, inner, None]
    return dy, dx


def test_field_components_are_independent_and_nonzero():
    dy, dx = fields_from_ramps(seed=0, tiles=32)
    assert dx.std() > 1.0 and dy.std() > 1.0  # displacement std 3 px at the control points
    correlation = np.corrcoef(dx.ravel(), dy.ravel())[0, 1]
    assert abs(correlation) < 0.2


def test_every_tile_in_parallel_map_gets_a_distinct_field():
    dy, dx = fields_from_ramps(seed=5, tiles=16)
    for i in range(16):
        for j in range(i + 1, 16):
            difference = np.abs(dx[i] - dx[j]).max() + np.abs(dy[i] - dy[j]).max()
            assert difference > 0.5, (i, j)


def test_field_is_smooth():
    field = elastic_field(tf.constant([3, 4]), 64, grid=4, displacement=3.0).numpy()
    assert field.shape == (64, 64, 2) and field.dtype == np.float32
    # neighbouring pixels move together (independent per-pixel draws would
    # differ by about 3 * sqrt(2) = 4.2 px on average)
    for axis in (0, 1):
        step = np.abs(np.diff(field, axis=axis))
        assert step.max() < 1.0 and step.mean() < 0.3


def control_point_fields(grid, displacement, seeds, size=49):
    """Fields of ``seeds`` seeds, (seeds, T, T, 2), and the control-point pixel indices.

    With ``size - 1`` a multiple of ``grid - 1`` every control point sits
    exactly on a pixel.
    """
    fields = np.stack([elastic_field(tf.constant([s, 11]), size, grid, displacement).numpy()
                       for s in range(seeds)])
    return fields, np.arange(grid) * (size - 1) // (grid - 1)


@pytest.mark.parametrize("displacement", [2.0, 5.0])
def test_field_std_follows_elastic_displacement(displacement):
    """The std at the interior control points, and over the tile, is elastic_displacement."""
    fields, points = control_point_fields(5, displacement, seeds=200)
    inner = points[1:-1]
    at_controls = fields[:, inner][:, :, inner]  # 200 seeds x 3 x 3 points x 2 components
    assert abs(at_controls.std() / displacement - 1.0) < 0.1
    assert abs(fields.std() / displacement - 1.0) < 0.1
    # and the pipeline deforms with that field (recovered from warped ramps)
    config = dataclasses.replace(ELASTIC_ONLY, elastic_grid=5, elastic_displacement=displacement)
    dy, dx = fields_from_ramps(seed=0, tiles=64, size=65, config=config)
    assert abs(np.concatenate([dy, dx]).std() / displacement - 1.0) < 0.15


def test_larger_elastic_grid_gives_a_less_smooth_field():
    coarse, _ = control_point_fields(4, 3.0, seeds=30)
    fine, _ = control_point_fields(13, 3.0, seeds=30)
    roughness = [np.abs(np.diff(f, axis=axis)).mean() for f in (coarse, fine) for axis in (1, 2)]
    assert min(roughness[2:]) > 2.0 * max(roughness[:2])  # about (13 - 1) / (4 - 1) = 4 times
    assert abs(fine.std() / coarse.std() - 1.0) < 0.15  # at a similar magnitude


@pytest.mark.parametrize("displacement", [1.0, 6.0])
def test_clipped_warp_stays_inside_the_context_margin(displacement):
    """Even with every control value at the clip bound, all bilinear samples are in the window."""
    config = dataclasses.replace(ELASTIC_ONLY, elastic_displacement=displacement)
    limit, margin, size = config.elastic_limit, config.margin, 32
    assert limit >= 6.0 * displacement * 0.999  # 3 std of the draws (std 2 * displacement)
    draws = coarse_displacements(tf.constant([1, 2]), config.elastic_grid, 100.0, limit).numpy()
    assert np.abs(draws).max() <= limit
    basis = tf.constant(spline_basis(size, config.elastic_grid))
    for sign in (-1.0, 1.0):
        coarse = tf.fill([2, config.elastic_grid, config.elastic_grid], sign * limit)
        ys, xs, _ = sampling_coordinates(coarse, basis, float(margin), float(margin))
        for coords in (ys.numpy(), xs.numpy()):
            assert coords.min() >= 0.0 and coords.max() < size + 2 * margin - 1


def test_warp_with_zero_field_is_identity():
    window = tf.random.uniform([20, 20, 2], seed=1)
    out = warp_window(window, tf.zeros([16, 16, 2]), margin=2)
    np.testing.assert_allclose(out.numpy(), window.numpy()[2:18, 2:18], atol=1e-6)


def test_warp_shift_by_half_pixel_is_bilinear():
    window = tf.reshape(tf.range(36, dtype=tf.float32), [6, 6, 1])
    field = tf.concat([tf.zeros([4, 4, 1]), tf.fill([4, 4, 1], 0.5)], axis=-1)  # dx = 0.5
    out = warp_window(window, field, margin=1).numpy()[..., 0]
    expected = window.numpy()[1:5, 1:5, 0] + 0.5
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_spline_basis_is_a_partition_of_unity():
    basis = spline_basis(50, 5)
    assert basis.shape == (50, 5) and (basis >= 0).all()
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, rtol=1e-6)
    assert basis[0].argmax() == 0 and basis[-1].argmax() == 4 and basis[25].argmax() == 2


@pytest.mark.parametrize("k", range(8))
def test_folded_dihedral_equals_dihedral_tf(k):
    """The warp folds transform k into its coordinates; it must equal dihedral_tf afterwards."""
    margin, size = 4, 16
    side = size + 2 * margin
    window = tf.random.stateless_uniform([side, side, 2], seed=[k, 1])
    flat = tf.reshape(window, [side * side, 2])
    coarse = coarse_displacements(tf.constant([k, 2]), 4, 2.0, margin - 1.5)
    basis = tf.constant(spline_basis(size, 4))
    reference = tf.transpose(_warp(flat, 0, side, False, coarse, basis, 0, margin), [1, 2, 0])
    folded = tf.transpose(_warp(flat, 0, side, False, coarse, basis, k, margin), [1, 2, 0])
    np.testing.assert_allclose(folded.numpy(), dihedral_tf(reference, k).numpy(), atol=1e-5)


@pytest.mark.parametrize("k", [0, 5])
def test_quad_layout_warp_equals_four_gathers(k):
    """The in-memory (M, 8) neighbour layout samples exactly what four plain gathers do."""
    margin, size = 4, 16
    side = size + 2 * margin
    window = tf.random.stateless_uniform([side + 1, side + 1, 2], seed=[k, 3])
    plain = tf.reshape(window[:-1, :-1], [side * side, 2])
    quad = tf.stack([window[:-1, :-1], window[:-1, 1:], window[1:, :-1], window[1:, 1:]], axis=-2)
    quad = tf.reshape(quad, [side * side, 8])
    coarse = coarse_displacements(tf.constant([k, 4]), 4, 2.0, margin - 1.5)
    basis = tf.constant(spline_basis(size, 4))
    expected = _warp(plain, 0, side, False, coarse, basis, k, margin)
    np.testing.assert_allclose(_warp(quad, 0, side, True, coarse, basis, k, margin).numpy(),
                               expected.numpy(), atol=1e-6)
    # and it matches the field-based reference warp for k = 0
    if k == 0:
        ys, xs, _ = sampling_coordinates(coarse, basis, 0.0, 0.0)
        ramp = tf.range(size, dtype=tf.float32)
        field = tf.stack([ys - ramp[:, None], xs - ramp[None, :]], axis=-1)
        np.testing.assert_allclose(warp_window(window[:-1, :-1], field, margin).numpy(),
                                   tf.transpose(expected, [1, 2, 0]).numpy(), atol=1e-5)


def test_image_and_label_share_the_field():
    image = smooth_image(96)
    labels = (image > 0.5).astype(np.uint8)[None]
    config = AugmentConfig(elastic_displacement=5.0, elastic_grid=6, gamma=0, contrast=0,
                           brightness=0, noise=0)  # elastic + dihedral
    tiles, tile_labels = take(train_dataset(image[None], labels, 64, 8, augment=config, seed=2,
                                            normalization=None), 2)
    assert set(np.unique(tile_labels)) <= {0.0, 1.0}
    agreement = ((tiles > 0.5) == (tile_labels > 0.5)).mean()
    assert agreement > 0.99
    # and the deformation did move things: tiles are not plain crops
    assert sum(find_crop(t, image[None]) is None for t in tiles[..., 0]) >= 12


# --------------------------------------------------------------------------- #
# Validation pipeline
# --------------------------------------------------------------------------- #


def test_validation_tile_origins():
    assert validation_tile_origins(40, 48, 32) == [(0, 0), (0, 16), (8, 0), (8, 16)]
    assert validation_tile_origins(64, 64, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert validation_tile_origins(20, 20, 28) == [(-4, -4)]


def test_validation_dataset_is_deterministic_and_covers_slices(volume):
    images, labels = volume
    dataset = validation_dataset(images, labels, 32, 5)
    assert dataset.cardinality().numpy() == 3  # 12 tiles in batches of 5
    tiles, tile_labels = take(dataset, 3)
    assert tiles.shape == (12, 32, 32, 1)
    expected = normalize(images)
    origins = validation_tile_origins(40, 48, 32)
    for i, (tile, label) in enumerate(zip(tiles[..., 0], tile_labels[..., 0])):
        n, (y, x) = divmod(i, 4)[0], origins[i % 4]
        np.testing.assert_array_equal(tile, expected[n, y:y + 32, x:x + 32])
        np.testing.assert_array_equal(label, labels[n, y:y + 32, x:x + 32])
    again = take(validation_dataset(images, labels, 32, 5), 3)
    np.testing.assert_array_equal(again[0], tiles)


def test_validation_tile_larger_than_slice(volume):
    images, labels = volume
    tiles, tile_labels = take(validation_dataset(images[:1, :20, :20], labels[:1, :20, :20], 28, 1), 1)
    expected = np.pad(normalize(images[:1, :20, :20])[0], 4, mode="reflect")
    np.testing.assert_array_equal(tiles[0, ..., 0], expected)
    np.testing.assert_array_equal(tile_labels[0, ..., 0], np.pad(labels[0, :20, :20], 4, mode="reflect"))


# --------------------------------------------------------------------------- #
# Lazy volumes and sampling
# --------------------------------------------------------------------------- #


def test_lazy_hdf5_matches_in_memory(tmp_path, volume):
    images, labels = volume
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = images
        f["labels"] = labels
    lazy_images, lazy_labels = open_stack(f"{path}:/raw"), open_stack(f"{path}:/labels")
    assert isinstance(lazy_images, h5py.Dataset)
    lazy = take(train_dataset(lazy_images, lazy_labels, 24, 4, seed=4), 2)
    eager = take(train_dataset(images, labels, 24, 4, seed=4), 2)
    np.testing.assert_array_equal(lazy[0], eager[0])
    np.testing.assert_array_equal(lazy[1], eager[1])
    val_lazy = take(validation_dataset(lazy_images, lazy_labels, 32, 4), 3)
    val_eager = take(validation_dataset(images, labels, 32, 4), 3)
    np.testing.assert_array_equal(val_lazy[0], val_eager[0])


def lazy_labels(kind, labels, tmp_path):
    """``labels`` as a lazy array-like: an h5py dataset, an np.memmap or a LazyStack."""
    if kind == "h5py":
        with h5py.File(tmp_path / "labels.h5", "w") as f:
            f["labels"] = labels
        return open_stack(f"{tmp_path / 'labels.h5'}:/labels")
    if kind == "memmap":
        mapped = np.memmap(tmp_path / "labels.raw", labels.dtype, "w+", shape=labels.shape)
        mapped[:] = labels
        return mapped
    if kind == "h5py_bool":
        with h5py.File(tmp_path / "labels.h5", "w") as f:
            f["labels"] = labels.astype(bool)
        return open_stack(f"{tmp_path / 'labels.h5'}:/labels", allow_bool=True)
    return LazyStack(labels.shape, labels.dtype, lambda i: labels[i])


@pytest.mark.parametrize("kind", ["h5py", "memmap", "LazyStack"])
def test_lazy_non_binary_labels_raise(tmp_path, volume, kind):
    """ISBI-convention labels (255 = interior) passed lazily must not be silently binarized."""
    images, labels = volume
    isbi = lazy_labels(kind, np.where(labels == 1, 0, 255).astype(np.uint8), tmp_path)
    with pytest.raises(ValueError, match=r"found values \[0, 255\].*read_labels"):
        train_dataset(images, isbi, 16, 2)
    with pytest.raises(ValueError, match=r"found values \[0, 255\]"):
        validation_dataset(images, isbi, 16, 2)


@pytest.mark.parametrize("kind", ["h5py", "h5py_bool", "LazyStack"])
def test_lazy_binary_labels_are_accepted(tmp_path, volume, kind):
    images, labels = volume
    lazy = lazy_labels(kind, labels, tmp_path)
    _, tile_labels = take(train_dataset(images, lazy, 16, 4, augment=False, seed=2), 1)
    _, eager_labels = take(train_dataset(images, labels, 16, 4, augment=False, seed=2), 1)
    np.testing.assert_array_equal(tile_labels, eager_labels)


def test_min_foreground_rejects_empty_tiles():
    images = np.random.default_rng(1).integers(0, 255, (2, 64, 64)).astype(np.uint8)
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[1, :24, :24] = 1  # foreground only in one corner of one slice
    plain = take(train_dataset(images, labels, 16, 8, augment=False, seed=0), 2)[1]
    chosen = take(train_dataset(images, labels, 16, 8, augment=False, seed=0, min_foreground=0.5,
                                max_sampling_attempts=64), 2)[1]
    assert (plain.mean(axis=(1, 2, 3)) >= 0.5).mean() < 0.5
    assert (chosen.mean(axis=(1, 2, 3)) >= 0.5).all()


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_shape_mismatch(volume):
    images, labels = volume
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3, 40, 48\).*\(2, 40, 48\)"):
        train_dataset(images, labels[:2], 16, 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        validation_dataset(images, labels[:, :20], 16, 2)


def test_non_binary_labels(volume):
    images, labels = volume
    with pytest.raises(ValueError, match=r"found values \[0, 1, 255\].*read_labels"):
        train_dataset(images, np.where(images > 100, 255, labels).astype(np.uint8), 16, 2)


def test_bad_arrays_and_arguments(volume):
    images, labels = volume
    with pytest.raises(ValueError, match=r"\(1, 3, 40, 48\)"):
        train_dataset(images[None], labels[None], 16, 2)
    with pytest.raises(ValueError, match="empty"):
        train_dataset(images[:0], labels[:0], 16, 2)
    with pytest.raises(ValueError, match="`tile_size` must be an integer >= 2; received tile_size=0"):
        train_dataset(images, labels, 0, 2)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1; received batch_size=2.5"):
        train_dataset(images, labels, 16, 2.5)
    with pytest.raises(ValueError, match="normalization=None needs float images"):
        train_dataset(images, labels, 16, 2, normalization=None)
    with pytest.raises(ValueError, match="'median'"):
        validation_dataset(images, labels, 16, 2, normalization="median")
    with pytest.raises(ValueError, match="unknown augmentation option.*rotate"):
        train_dataset(images, labels, 16, 2, augment={"rotate": True})
    with pytest.raises(ValueError, match="min_foreground must be a number in \\[0, 1\\]; received 2"):
        train_dataset(images, labels, 16, 2, min_foreground=2)


def test_augment_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="`elastic_grid` must be an integer >= 2; received elastic_grid=1"):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(ValueError, match="noise must be >= 0.0; received -0.1"):
        AugmentConfig(noise=-0.1)
    with pytest.raises(ValueError, match="contrast must be < 1.0"):
        AugmentConfig(contrast=1.0)
    config = AugmentConfig(noise=0.0, blur_probability=0.5)
    assert AugmentConfig.from_dict(config.to_dict()) == config
    assert AugmentConfig.none().margin == 0 and not AugmentConfig.none().intensity_active


def test_blur_and_intensity_change_only_the_image(volume):
    images, labels = volume
    config = AugmentConfig(elastic=False, dihedral=False, gamma=0.3, contrast=0.3, brightness=0.1,
                           noise=0.05, blur_probability=1.0, blur_sigma=1.5)
    tiles, tile_labels = take(train_dataset(images, labels, 16, 8, augment=config, seed=9), 1)
    plain, plain_labels = take(train_dataset(images, labels, 16, 8, augment=False, seed=9), 1)
    np.testing.assert_array_equal(tile_labels, plain_labels)  # same crops, labels untouched
    assert np.abs(tiles - plain).mean() > 0.01
    assert tiles.min() >= 0.0 and tiles.max() <= 1.0


ONE_INTENSITY_SWITCH = {
    "gamma": {"gamma": 0.3},
    "contrast": {"contrast": 0.3},
    "brightness": {"brightness": 0.1},
    "noise": {"noise": 0.05},
    "blur": {"blur_probability": 1.0, "blur_sigma": 1.5},
}
SWITCHED_OFF = {
    "gamma": {"gamma": 0.0},
    "contrast": {"contrast": 0.0},
    "brightness": {"brightness": 0.0},
    "noise": {"noise": 0.0},
    "blur": {"blur_probability": 0.0, "blur_sigma": 1.5},
}


@pytest.mark.parametrize("switch", sorted(ONE_INTENSITY_SWITCH))
def test_each_intensity_switch_alone_changes_only_the_image(volume, switch):
    images, labels = volume
    config = dataclasses.replace(NO_AUG, **ONE_INTENSITY_SWITCH[switch])  # no elastic, no dihedral
    tiles, tile_labels = take(train_dataset(images, labels, 16, 8, augment=config, seed=9), 1)
    again, _ = take(train_dataset(images, labels, 16, 8, augment=config, seed=9), 1)
    plain, plain_labels = take(train_dataset(images, labels, 16, 8, augment=False, seed=9), 1)
    np.testing.assert_array_equal(tile_labels, plain_labels)  # same crops, labels untouched
    np.testing.assert_array_equal(tiles, again)  # deterministic for a seed
    assert all(not np.array_equal(t, p) for t, p in zip(tiles, plain))  # every tile changed
    assert np.abs(tiles - plain).mean() > 1e-3
    assert tiles.min() >= 0.0 and tiles.max() <= 1.0


@pytest.mark.parametrize("switch", sorted(SWITCHED_OFF))
def test_each_intensity_switch_at_zero_gives_the_exact_crop(volume, switch):
    images, labels = volume
    config = dataclasses.replace(NO_AUG, **SWITCHED_OFF[switch])
    assert not config.intensity_active
    tiles, tile_labels = take(train_dataset(images, labels, 16, 8, augment=config, seed=9), 1)
    plain, plain_labels = take(train_dataset(images, labels, 16, 8, augment=False, seed=9), 1)
    np.testing.assert_array_equal(tiles, plain)
    np.testing.assert_array_equal(tile_labels, plain_labels)


def test_blur_kernel_must_fit_the_tile(volume):
    """Radius ceil(3 * blur_sigma) >= tile_size used to fail inside the tf.data graph."""
    images, labels = volume
    blur = dataclasses.replace(NO_AUG, blur_probability=1.0, blur_sigma=1.0)  # radius 3
    with pytest.raises(ValueError, match=r"blur_sigma=1.0 needs tile_size > 3 .*received tile_size=3"):
        train_dataset(images, labels, 3, 2, augment=blur)
    with pytest.raises(ValueError, match="blur_sigma=2.5 needs tile_size > 8"):
        train_dataset(images, labels, 8, 2, augment=dataclasses.replace(blur, blur_sigma=2.5))
    tiles, _ = take(train_dataset(images, labels, 4, 2, augment=blur, seed=1), 1)  # smallest fit
    assert tiles.shape == (2, 4, 4, 1) and np.isfinite(tiles).all()
    take(train_dataset(images, labels, 3, 2, augment=dataclasses.replace(blur, blur_probability=0.0)), 1)


# --------------------------------------------------------------------------- #
# ISBI 2012 convenience
# --------------------------------------------------------------------------- #


def test_isbi2012_datasets_on_fake_files(tmp_path, volume):
    images, labels = volume
    tifffile.imwrite(tmp_path / "train-volume.tif", images)
    tifffile.imwrite(tmp_path / "train-labels.tif", np.where(labels == 1, 0, 255).astype(np.uint8))
    train, val = isbi2012_datasets(tmp_path, train_slices=[0, 1], val_slices=[2], tile_size=32,
                                   batch_size=2, augment=False)
    image, label = next(iter(train))
    assert image.shape == (2, 32, 32, 1) and label.shape == (2, 32, 32, 1)
    val_tiles, val_labels = take(val, 2)
    np.testing.assert_array_equal(val_tiles[0, ..., 0], normalize(images[2:])[0, :32, :32])
    np.testing.assert_array_equal(val_labels[0, ..., 0], labels[2, :32, :32])
    with pytest.raises(ValueError, match=r"val_slices: slice indices \[5\] out of range"):
        isbi2012_datasets(tmp_path, train_slices=[0], val_slices=[5])


@pytest.mark.parametrize("elastic", [False, True])
def test_pipeline_draws_all_eight_dihedral_transforms(elastic):
    """Tile == slice, so every tile is one of the 8 transforms of the slice (exactly, without the
    warp; nearest of the 8, with a tiny elastic field, on both the plain and the folded path)."""
    from fusionnet_tf.dihedral import dihedral_np

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (1, 16, 16)).astype(np.uint8)
    image[0, 0, 0], image[0, -1, -1] = 0, 255  # slice min-max normalization is then x / 255
    labels = (image > 127).astype(np.uint8)
    config = dataclasses.replace(NO_AUG, dihedral=True, elastic=elastic, elastic_displacement=0.01)
    tiles, tile_labels = take(train_dataset(image, labels, 16, 16, augment=config, seed=4), 4)
    candidates = np.stack([dihedral_np(image[0, ..., None] / 255.0, k) for k in range(8)])
    seen = set()
    for tile, tile_label in zip(tiles, tile_labels):
        errors = np.abs(candidates - tile[None]).max(axis=(1, 2, 3))
        k = int(np.argmin(errors))
        assert errors[k] < (1e-6 if not elastic else 0.05), errors
        np.testing.assert_array_equal(tile_label[..., 0], dihedral_np(labels[0, ..., None], k)[..., 0])
        seen.add(k)
    assert seen == set(range(8))  # 64 tiles: every transform is drawn
