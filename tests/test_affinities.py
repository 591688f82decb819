"""Affinity targets on hand-built label volumes, the TF twin, and instance-label readers."""

import numpy as np
import pytest

from fusionnet_tf.data.affinities import (DEFAULT_OFFSETS_2D, DEFAULT_OFFSETS_3D,
                                          affinity_targets, read_instance_labels)

NEAREST = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def two_objects():
    """(2, 3, 4): object 1 left, object 2 right (x >= 2), boundary voxels (0) at z1 y1 x0-1."""
    labels = np.ones((2, 3, 4), np.uint16)
    labels[:, :, 2:] = 2
    labels[1, 1, :2] = 0
    return labels


def test_default_offsets_follow_the_contract():
    assert DEFAULT_OFFSETS_3D[:3] == NEAREST
    assert len(DEFAULT_OFFSETS_3D) == 10
    assert DEFAULT_OFFSETS_2D == tuple(o for o in DEFAULT_OFFSETS_3D if o[0] == 0)
    assert len(DEFAULT_OFFSETS_2D) == 8


def test_two_objects_and_a_boundary():
    labels = two_objects()
    affs, mask = affinity_targets(labels, NEAREST)
    assert affs.shape == mask.shape == (3, 2, 3, 4) and affs.dtype == np.float32
    x_aff = affs[2]
    # across the object border (x=1 -> x=2) the affinity is 0, inside 1
    assert (x_aff[:, :, 2] == 0).all()
    assert x_aff[0, 0, 1] == 1 and x_aff[0, 0, 3] == 1
    # a boundary voxel has affinity 0 to everything (another 0 too), and its neighbours to it
    assert affs[:, 1, 1, 1].tolist() == [0, 0, 0]
    assert affs[2, 1, 1, 2] == 0          # x-neighbour of the 0 voxel (and other object)
    assert affs[1, 1, 2, 1] == 0          # y-neighbour below the 0 voxel
    assert affs[0, 1, 0, 1] == 1          # z-affinity of an untouched voxel of object 1
    # outside the volume: mask 0 and affinity 0 on the first plane of each axis
    assert (mask[0, 0] == 0).all() and (mask[0, 1] == 1).all()
    assert (mask[1, :, 0] == 0).all() and (mask[2, :, :, 0] == 0).all()
    assert (affs[mask == 0] == 0).all()


def test_an_object_that_ends_in_z():
    labels = np.zeros((3, 2, 2), np.uint32)
    labels[:2] = 7          # object 7 in sections 0 and 1 only
    labels[2] = 9           # another object starts at z=2
    affs, mask = affinity_targets(labels, ((-1, 0, 0), (-2, 0, 0)))
    assert affs[0, 1].min() == 1        # 7 continues from z0 to z1
    assert affs[0, 2].max() == 0        # z2 (9) vs z1 (7): a split
    assert affs[1, 2].max() == 0        # z2 vs z0
    assert mask[1, :2].max() == 0 and mask[1, 2].min() == 1


def test_long_offsets_leaving_the_volume_are_masked():
    labels = np.full((1, 4, 30), 5, np.uint64)
    affs, mask = affinity_targets(labels, ((0, 0, -27), (0, -9, 0), (1, 0, 0), (0, 0, 3)))
    assert mask[0, 0, :, :27].max() == 0 and mask[0, 0, :, 27:].min() == 1
    assert np.array_equal(affs[0], mask[0])
    assert mask[1].max() == 0 and affs[1].max() == 0          # 9 > 4 rows: always outside
    assert mask[2].max() == 0                                  # +z in a 1-section volume
    assert mask[3, 0, :, -3:].max() == 0 and mask[3, 0, :, :-3].min() == 1   # positive offset


def test_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (3, 5, 6))
    offsets = ((-1, 0, 0), (0, -2, 0), (0, 1, -3), (2, 0, 1))
    affs, mask = affinity_targets(labels, offsets)
    for c, (dz, dy, dx) in enumerate(offsets):
        for z, y, x in np.ndindex(labels.shape):
            q = (z + dz, y + dy, x + dx)
            inside = all(0 <= v < n for v, n in zip(q, labels.shape))
            assert mask[c, z, y, x] == inside
            want = inside and labels[z, y, x] != 0 and labels[z, y, x] == labels[q]
            assert affs[c, z, y, x] == want


def test_tf_version_equals_numpy():
    import tensorflow as tf

    from fusionnet_tf.data.affinities import affinity_targets_tf

    labels = np.random.default_rng(1).integers(0, 4, (4, 30, 31)).astype(np.int32)
    affs, mask = affinity_targets_tf(tf.constant(labels), DEFAULT_OFFSETS_3D)
    want_affs, want_mask = affinity_targets(labels, DEFAULT_OFFSETS_3D)
    np.testing.assert_array_equal(affs.numpy(), np.moveaxis(want_affs, 0, -1))
    np.testing.assert_array_equal(mask.numpy(), np.moveaxis(want_mask, 0, -1))


@pytest.mark.parametrize("offsets", [[], [(0, 0, 0)], [(1, 2)], [(0.5, 0, 0)]])
def test_bad_offsets_are_refused(offsets):
    with pytest.raises(ValueError, match="offsets"):
        affinity_targets(np.zeros((1, 2, 2), np.uint8), offsets)


def test_float_labels_are_refused():
    with pytest.raises(ValueError, match="integer"):
        affinity_targets(np.zeros((1, 2, 2), np.float32), NEAREST)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_readers_keep_integer_ids(tmp_path, dtype):
    import h5py
    import tifffile
    import zarr

    labels = np.zeros((3, 8, 9), dtype)
    labels[:, :4] = 70000 if dtype != "uint16" else 65535
    labels[1, 5:, 3:] = 3
    tifffile.imwrite(tmp_path / "l.tif", labels)
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["seg/ids"] = labels
    zarr.save_array(str(tmp_path / "l.zarr"), labels)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("labels", shape=labels.shape, dtype=labels.dtype)[...] = labels
    for spec in (tmp_path / "l.tif", f"{tmp_path / 'l.h5'}:/seg/ids", str(tmp_path / "l.zarr"),
                 f"{tmp_path / 'g.zarr'}:/labels"):
        read = read_instance_labels(spec)
        assert read.dtype == np.dtype(dtype), spec
        np.testing.assert_array_equal(read, labels)


def test_reader_refuses_float_labels(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="integer"):
        read_instance_labels(tmp_path / "f.tif")
