"""One ``file.h5:/key`` rule for every reader, writer, config check and volume input."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from fusionnet_tf.data.readers import HDF5_SUFFIXES, read_stack
from fusionnet_tf.io.spec import Spec, parse_spec
from fusionnet_tf.training.config import _stack_path
from fusionnet_tf.volumes import storage

SUFFIXES = [".h5", ".hdf5", ".hdf", ".H5", ".HDF5"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("key, expected", [("/raw", "raw"), ("raw", "raw"),
                                           ("/a/b", "a/b"), ("", None)])
def test_hdf5_suffixes_and_keys(suffix, key, expected, tmp_path):
    path = tmp_path / f"em{suffix}"
    spec = f"{path}:{key}"
    assert parse_spec(spec) == Spec(path, expected, "hdf5")
    assert _stack_path(spec) == path
    path.touch()
    assert storage.existing_spec(spec) == Spec(path, expected, "hdf5")


@pytest.mark.parametrize("spec, kind", [("em.tif", "tiff"), ("em.zarr:/raw", "zarr"),
                                        ("em.h5.tif", "tiff")])
def test_other_specs_are_not_hdf5(spec, kind):
    assert parse_spec(spec).kind == kind


@pytest.mark.parametrize("spec", ["em.h5x:/raw", "em.he5:/raw"])
def test_near_hdf5_suffixes_are_refused(spec):
    with pytest.raises(ValueError, match="unknown file extension"):
        parse_spec(spec)


def test_without_key_the_whole_spec_is_the_file():
    assert parse_spec("dir/em.hdf") == Spec(Path("dir/em.hdf"), None, "hdf5")


def test_one_suffix_list():
    from fusionnet_tf.inference import writers

    assert writers.HDF5_SUFFIXES is HDF5_SUFFIXES is storage.HDF5_SUFFIXES
    assert HDF5_SUFFIXES == (".h5", ".hdf5", ".hdf")


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".hdf"])
def test_read_stack_and_volume_input_accept_a_key_without_slash(suffix, tmp_path):
    path = tmp_path / f"em{suffix}"
    data = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    with h5py.File(path, "w") as handle:
        handle["group/raw"] = data
        handle["other"] = data
    np.testing.assert_array_equal(read_stack(f"{path}:group/raw"), data)
    assert storage.existing_spec(f"{path}:group/raw") == Spec(path, "group/raw", "hdf5")
    assert _stack_path(f"{path}:group/raw").exists()  # was the whole spec before: "not found"


def test_key_with_a_colon_splits_at_the_suffix(tmp_path):
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as handle:
        handle["t:0"] = np.zeros((1, 4, 4), np.uint8)
    assert storage.existing_spec(f"{path}:/t:0") == Spec(path, "t:0", "hdf5")
    assert read_stack(f"{path}:/t:0").shape == (1, 4, 4)
