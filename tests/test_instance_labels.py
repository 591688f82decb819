"""Instance labels (one id per cell, 0 = gap) to membrane targets of a chosen width."""

import numpy as np
import pytest
import tifffile

from fusionnet_tf.data import read_labels
from fusionnet_tf.data.labels import instance_boundaries, to_membrane

# ids 1 | 2 touch along a vertical line; 3 lies below them behind a 1-px gap of 0;
# 4 touches 3 on its right
LABELS = np.array([
    [1, 1, 1, 2, 2, 2, 2],
    [1, 1, 1, 2, 2, 2, 2],
    [1, 1, 1, 2, 2, 2, 2],
    [0, 0, 0, 0, 0, 0, 0],
    [3, 3, 3, 3, 3, 4, 4],
    [3, 3, 3, 3, 3, 4, 4],
    [3, 3, 3, 3, 3, 4, 4],
], np.uint16)

WIDTH_1 = np.array([
    [0, 0, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 1, 0, 0],
], np.uint8)

WIDTH_3 = np.array([
    [0, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 1, 1, 0],
], np.uint8)


def test_width_1_marks_gaps_and_one_pixel_where_ids_touch():
    result = instance_boundaries(LABELS, width=1)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, WIDTH_1)


def test_width_3_dilates_every_boundary_to_three_pixels():
    np.testing.assert_array_equal(instance_boundaries(LABELS, width=3), WIDTH_3)


def test_ids_are_compared_within_a_section_only():
    """3D ids: a cell that changes id between sections is no boundary in-plane."""
    volume = np.stack([np.full((4, 4), 5, np.uint32), np.full((4, 4), 6, np.uint32)])
    np.testing.assert_array_equal(instance_boundaries(volume), np.zeros((2, 4, 4), np.uint8))
    volume[1, :, 2:] = 7
    expected = np.zeros((2, 4, 4), np.uint8)
    expected[1, :, 1] = 1
    np.testing.assert_array_equal(instance_boundaries(volume), expected)
    wide = instance_boundaries(volume, width=3)  # dilated in-plane, never into section 0
    assert not wide[0].any() and wide[1, :, :3].all() and not wide[1, :, 3].any()


def test_read_labels_instance_convention_from_a_file(tmp_path):
    tifffile.imwrite(tmp_path / "ids.tif", np.stack([LABELS, LABELS]), photometric="minisblack")
    result = read_labels(tmp_path / "ids.tif", "instance", boundary_width=3)
    np.testing.assert_array_equal(result, np.stack([WIDTH_3, WIDTH_3]))


@pytest.mark.parametrize("labels, width, message", [
    (LABELS.astype(np.float32), 1, "integer ids"),
    (LABELS.astype(np.int16) - 1, 1, "non-negative"),
    (LABELS, 0, "boundary_width"),
])
def test_bad_instance_labels_are_refused(labels, width, message):
    with pytest.raises(ValueError, match=message):
        to_membrane(labels, "instance", boundary_width=width, name="ids.tif")


def test_training_reads_instance_labels_with_the_configured_width(tmp_path):
    from fusionnet_tf.training.config import load_config
    from fusionnet_tf.training.run import load_data

    tifffile.imwrite(tmp_path / "ids.tif", np.stack([LABELS] * 3), photometric="minisblack")
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((3, 7, 7), np.uint8), photometric="minisblack")
    config = load_config(None, [f"data.train_images={tmp_path / 'raw.tif'}",
                                f"data.train_labels={tmp_path / 'ids.tif'}",
                                "data.train_slices=0-1", "data.val_slices=[2]",
                                "data.label_convention=instance", "data.boundary_width=3"])
    _, train_labels, _, val_labels = load_data(config)
    np.testing.assert_array_equal(train_labels, np.stack([WIDTH_3, WIDTH_3]))
    np.testing.assert_array_equal(val_labels, WIDTH_3[None])
    with pytest.raises(ValueError, match="data.boundary_width"):
        load_config(None, ["data.boundary_width=0"])
