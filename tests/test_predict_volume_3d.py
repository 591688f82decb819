"""Block-wise 3D affinity prediction (halos in z, y, x) equals in-memory prediction."""

import json

import numpy as np
import pytest
import zarr

from affinity_models import conv_model
from fusionnet_tf import cli
from fusionnet_tf.data import normalize
from fusionnet_tf.inference import Predictor
from fusionnet_tf.volumes import predict_volume

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]  # conv_model has 3 output channels
# Y = 13 is shorter than the tile: padded to the (1, 2, 2) input multiple (14), one tile
SETTINGS = dict(tile_shape=(4, 16, 16), overlap=(2, 4, 4), tta=16, engine="plain")
BLOCK = (3, 8, 13)


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).integers(0, 4000, (7, 13, 40)).astype(np.uint16)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol3d")
    conv_model().save(root / "aff.keras")
    (root / "aff.offsets.json").write_text(json.dumps(OFFSETS))
    return root / "aff.keras"


@pytest.fixture(scope="module")
def reference(volume, model_file):
    predictor = Predictor(str(model_file), **SETTINGS)
    assert predictor.offsets == tuple(OFFSETS)
    assert len({o[2] for o in predictor.tile_origins(*volume.shape)}) > 2  # x has several tiles
    return predictor.predict(normalize(volume, mode="slice"))


def write_zarr(path, array):
    out = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=(2, 13, 20),
                          dtype=array.dtype)
    out[:] = array
    return str(path)


def test_blockwise_3d_equals_in_memory(tmp_path, volume, model_file, reference):
    spec = write_zarr(tmp_path / "in.zarr", volume)
    out = tmp_path / "out.zarr"
    summary = predict_volume(spec, out, str(model_file), block_shape=BLOCK, **SETTINGS)
    assert summary["blocks_computed"] == 3 * 2 * 4 and len(summary["halo"]) == 3
    assert min(summary["halo"]) > 0  # halos in z, y and x
    array = zarr.open_array(str(out), mode="r")
    assert array.shape == (3,) + volume.shape and array.dtype == np.float32
    assert array.attrs["kind"] == "affinities"
    assert [tuple(o) for o in array.attrs["offsets"]] == OFFSETS
    np.testing.assert_allclose(array[...], reference, rtol=0, atol=1e-5)
    again = predict_volume(spec, out, str(model_file), block_shape=BLOCK, **SETTINGS)
    assert again["blocks_skipped"] == again["blocks_total"]  # resumed: nothing left


@pytest.mark.e2e
def test_cli_predict_volume_3d_on_dask(tmp_path, volume, model_file, reference, capsys,
                                       monkeypatch, dask_cluster):
    monkeypatch.setattr(cli, "COMMANDS", {"predict-volume": "fusionnet_tf.cli.predict_volume"})
    spec = write_zarr(tmp_path / "in.zarr", volume)
    out = tmp_path / "out.zarr"
    code = cli.main(["predict-volume", spec, str(out), "--model", str(model_file),
                     "--tile-size", "16", "--tile-z", "4", "--overlap-z", "2", "--overlap", "4",
                     "--tta", "16", "--engine", "plain", "--block", "13", "--scheduler",
                     dask_cluster.scheduler_address,
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    array = zarr.open_array(str(out), mode="r")
    assert array.chunks == (3, 4, 13, 13)  # blocks as deep as the tile by default
    np.testing.assert_allclose(array[...], reference, rtol=0, atol=1e-5)


def test_offsets_with_a_2d_model_and_unknown_offsets(tmp_path, volume, model_file, capsys,
                                                     monkeypatch, tiny_model_file):
    monkeypatch.setattr(cli, "COMMANDS", {"predict-volume": "fusionnet_tf.cli.predict_volume"})
    spec = write_zarr(tmp_path / "in.zarr", volume)
    code = cli.main(["predict-volume", spec, str(tmp_path / "o.zarr"), "--model",
                     str(tiny_model_file), "--offsets", "[[-1,0,0]]", "--quiet"])
    assert code == 2 and "--offsets applies to 3D affinity models" in capsys.readouterr().err
    bare = tmp_path / "bare.keras"
    bare.write_bytes(model_file.read_bytes())  # no sidecar
    code = cli.main(["predict-volume", spec, str(tmp_path / "o.zarr"), "--model", str(bare),
                     "--tta", "1", "--quiet"])
    assert code == 2 and "offsets of the 3D model are unknown" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()
