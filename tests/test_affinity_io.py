"""Affinity files: round trips in TIFF / HDF5 / zarr, recognition by metadata, bad input."""

import json

import h5py
import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.data.affinity_io import (affinity_metadata, read_affinities,
                                           write_affinities)

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3, 0)]
FORMATS = ["aff.tif", "aff.h5", "aff.h5:/volumes/affs", "aff.zarr"]


@pytest.fixture(scope="module")
def affs():
    return np.random.default_rng(0).uniform(0, 1, (4, 3, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip(tmp_path, affs, name):
    spec = f"{tmp_path}/{name}"
    write_affinities(spec, affs, OFFSETS, metadata={"model": "tiny"})
    read, offsets = read_affinities(spec)
    assert read.dtype == np.float32 and read.shape == affs.shape
    np.testing.assert_array_equal(read, affs)
    assert offsets == OFFSETS
    metadata = affinity_metadata(spec)
    assert metadata["kind"] == "affinities" and metadata["model"] == "tiny"
    assert [tuple(o) for o in metadata["offsets"]] == OFFSETS
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_stored_metadata_follows_the_contract(tmp_path, affs):
    write_affinities(tmp_path / "a.tif", affs, OFFSETS)
    description = json.loads(tifffile.TiffFile(tmp_path / "a.tif").pages[0].description)
    assert description["kind"] == "affinities" and description["offsets"][3] == [0, -3, 0]
    write_affinities(tmp_path / "a.h5", affs, OFFSETS)
    with h5py.File(tmp_path / "a.h5", "r") as handle:
        attrs = handle["affinities"].attrs
        assert attrs["kind"] == "affinities" and json.loads(attrs["offsets"])[0] == [-1, 0, 0]
    write_affinities(tmp_path / "a.zarr", affs, OFFSETS)
    import zarr

    assert zarr.open_array(str(tmp_path / "a.zarr"), mode="r").attrs["offsets"][2] == [0, 0, -1]


def test_hdf5_keeps_other_datasets_and_zarr_is_replaced(tmp_path, affs):
    with h5py.File(tmp_path / "a.h5", "w") as handle:
        handle["raw"] = np.arange(4)
    write_affinities(tmp_path / "a.h5:/affs", affs, OFFSETS)
    with h5py.File(tmp_path / "a.h5", "r") as handle:
        assert set(handle) == {"raw", "affs"}
    write_affinities(tmp_path / "a.zarr", affs, OFFSETS)
    write_affinities(tmp_path / "a.zarr", affs[:3], OFFSETS[:3])
    assert read_affinities(tmp_path / "a.zarr")[0].shape == (3, 3, 5, 6)


def test_other_files_are_not_affinity_files(tmp_path):
    tifffile.imwrite(tmp_path / "pred.tif", np.zeros((2, 4, 4), np.float32),
                     description=json.dumps({"convention": "membrane"}), metadata=None)
    with h5py.File(tmp_path / "p.h5", "w") as handle:
        handle["prediction"] = np.zeros((2, 4, 4), np.float32)
    for spec in (tmp_path / "pred.tif", tmp_path / "p.h5", tmp_path / "missing.tif",
                 tmp_path / "folder"):
        assert affinity_metadata(spec) is None
    with pytest.raises(ValueError, match="not an affinity file"):
        read_affinities(tmp_path / "pred.tif")


def _tiff_with(path, pages, document):
    tifffile.imwrite(path, pages, photometric="minisblack", description=json.dumps(document),
                     metadata=None)


def test_an_affinity_file_without_offsets(tmp_path, affs):
    _tiff_with(tmp_path / "a.tif", affs.reshape(12, 5, 6), {"kind": "affinities"})
    with h5py.File(tmp_path / "a.h5", "w") as handle:
        handle["affinities"] = affs  # a 4D array without any metadata
    for spec in (tmp_path / "a.tif", tmp_path / "a.h5"):
        with pytest.raises(ValueError, match="an affinity file without offsets") as info:
            read_affinities(spec)
        assert "\n" not in str(info.value)


def test_offsets_that_do_not_match_the_channels(tmp_path, affs):
    with h5py.File(tmp_path / "a.h5", "w") as handle:
        handle["affinities"] = affs
        handle["affinities"].attrs["kind"] = "affinities"
        handle["affinities"].attrs["offsets"] = json.dumps([[-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    with pytest.raises(ValueError, match="3 offsets in the metadata but 4 affinity channels"):
        read_affinities(tmp_path / "a.h5")
    _tiff_with(tmp_path / "a.tif", affs.reshape(12, 5, 6),
               {"kind": "affinities", "offsets": [[-1, 0, 0]] * 5})
    with pytest.raises(ValueError, match="5 offsets in the metadata but 12 TIFF pages"):
        read_affinities(tmp_path / "a.tif")
    _tiff_with(tmp_path / "b.tif", affs.reshape(12, 5, 6),
               {"kind": "affinities", "offsets": [[-1, 0, 0]] * 3, "shape": [4, 3, 5, 6]})
    with pytest.raises(ValueError, match="3 offsets in the metadata but 4 affinity channels"):
        read_affinities(tmp_path / "b.tif")


@pytest.mark.parametrize("offsets, message", [
    (OFFSETS[:3], "3 offsets in the metadata but 4 affinity channels"),
    ([(0, 0, 0)] + OFFSETS[1:], "links a voxel to itself"),
    ([(1, 0)] + OFFSETS[1:], "integer triples"),
])
def test_write_refuses_bad_offsets_and_writes_nothing(tmp_path, affs, offsets, message):
    with pytest.raises(ValueError, match=message):
        write_affinities(tmp_path / "a.h5", affs, offsets)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_values_outside_0_1(tmp_path, affs):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_affinities(tmp_path / "a.tif", affs + 1, OFFSETS)
    assert list(tmp_path.iterdir()) == []


def test_cli_segment_bad_affinity_files_exit_2_with_one_line(tmp_path, capsys, affs):
    _tiff_with(tmp_path / "none.tif", affs.reshape(12, 5, 6), {"kind": "affinities"})
    with h5py.File(tmp_path / "wrong.h5", "w") as handle:
        handle["affinities"] = affs
        handle["affinities"].attrs["offsets"] = json.dumps([[-1, 0, 0]])
    for name, message in (("none.tif", "without offsets"),
                          ("wrong.h5", "1 offsets in the metadata but 4 affinity channels")):
        out = tmp_path / f"{name}.seg.tif"
        code = main(["segment", str(tmp_path / name), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
