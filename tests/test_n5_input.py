"""N5 input for predict-volume (read with tensorstore): a small N5 dataset written in the
N5 convention (dimensions x first) predicts exactly like the same array from a TIFF."""

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
ts = pytest.importorskip("tensorstore")
tifffile = pytest.importorskip("tifffile")

from fusionnet_tf import cli  # noqa: E402
from fusionnet_tf.volumes import storage  # noqa: E402

SHAPE = (2, 72, 88)  # (Z, Y, X): not square, so a swapped axis order cannot pass
TILING = ["--tile-size", "64", "--overlap", "16", "--engine", "plain", "--batch-size", "4",
          "--quiet"]


def write_n5(path, array, block=(1, 40, 48)):
    """Write (Z, Y, X) ``array`` as an N5 dataset at ``path`` (dimensions [X, Y, Z])."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": {"dimensions": list(array.shape[::-1]),
                                  "blockSize": list(block[::-1]),
                                  "dataType": str(array.dtype),
                                  "compression": {"type": "gzip"}}},
                    create=True).result()
    store.T[...] = array  # the N5 view, transposed to (Z, Y, X)
    return path


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    slices = [np.sin(yy / (5 + z)) * np.cos(xx / 9) + 0.2 * rng.standard_normal(SHAPE[1:])
              for z in range(SHAPE[0])]
    return np.stack([(s - s.min()) / np.ptp(s) * 255 for s in slices]).astype(np.uint8)


@pytest.fixture(scope="module")
def container(tmp_path_factory, volume):
    root = tmp_path_factory.mktemp("n5") / "em.n5"
    write_n5(root / "volumes" / "raw", volume)
    return root


@pytest.fixture(scope="module")
def model_path(tiny_model_file):
    return tiny_model_file


def test_open_n5_specs_read_z_y_x(container, volume):
    for spec in (f"{container}:/volumes/raw", f"{container}:volumes/raw",
                 str(container / "volumes" / "raw"), str(container)):  # the one dataset
        array, name = storage.open_volume(spec)
        assert array.shape == SHAPE and array.dtype == np.uint8, spec
        np.testing.assert_array_equal(array[1, 10:30, 5:60], volume[1, 10:30, 5:60])
        np.testing.assert_array_equal(np.asarray(array), volume)
        assert name.endswith("volumes/raw")
    array, _ = storage.open_any_volume(f"{container}:/volumes/raw")  # view, export-precomputed
    np.testing.assert_array_equal(array[...], volume)


def test_n5_errors_name_the_datasets(tmp_path, volume):
    root = tmp_path / "two.n5"
    write_n5(root / "a", volume)
    write_n5(root / "b", volume)
    with pytest.raises(ValueError, match=r"holds 2 datasets \['a', 'b'\]"):
        storage.open_volume(root)
    with pytest.raises(KeyError, match="'/c' not found in N5 container"):
        storage.open_volume(f"{root}:/c")


def test_predict_volume_from_n5_equals_predict_from_tiff(tmp_path, container, volume,
                                                         model_path, capsys):
    tiff = tmp_path / "em.tif"
    tifffile.imwrite(tiff, volume)
    code = cli.main(["predict", str(tiff), "-o", str(tmp_path / "pred.tif"), "--model",
                     str(model_path)] + TILING)
    assert code == 0, capsys.readouterr().err
    expected = tifffile.imread(tmp_path / "pred.tif")

    out = tmp_path / "pred.zarr"
    code = cli.main(["predict-volume", f"{container}:/volumes/raw", str(out), "--model",
                     str(model_path), "--workers", "0", "--block", "48"] + TILING)
    assert code == 0, capsys.readouterr().err
    result = zarr.open_array(str(out), mode="r")[...]
    assert result.shape == SHAPE
    np.testing.assert_allclose(result, expected, atol=1e-5)
