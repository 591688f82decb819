"""Exports of a 3D affinity FusionNet: SavedModel/REST (5D signature), ONNX, bioimage.io,
and one-line refusals by the 2D-only runtimes (LiteRT, TensorRT).

One tiny fusionnet3d (base 2, depth 2, one anisotropic level, one residual conv) is built
and exported once per session; every test reads those artifacts.
"""

import json
import zipfile

import numpy as np
import pytest

from fusionnet_tf.cli import main

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -3))  # conftest.AFFINITY_OFFSETS_3D, the fixture's
MULTIPLES = (2, 4, 4)  # z pooled once (isotropic level 2), y and x twice


@pytest.fixture(scope="session")
def tiny3d(tiny_affinity_model):
    """The session's tiny 3D affinity model (conftest): (model, .keras path with its
    MODEL.offsets.json, a (1, 4, 16, 16, 1) batch, Keras output)."""
    return tiny_affinity_model


@pytest.fixture(scope="session")
def saved_model_dir(tiny3d, tmp_path_factory):
    _, path, _, _ = tiny3d
    out = tmp_path_factory.mktemp("sm")
    assert main(["export", "--model", str(path), "--format", "saved_model", "--output",
                 str(out)]) == 0
    return out / "fusionnet" / "1"


@pytest.fixture(scope="session")
def onnx_file(tiny3d, tmp_path_factory):
    _, path, _, _ = tiny3d
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "--model", str(path), "--format", "onnx", "--output", str(out)]) == 0
    return out / "fusionnet.onnx"


@pytest.fixture(scope="session")
def package(tiny3d, tmp_path_factory):
    """A bioimage.io package (keras_v3 weights; bioimageio.core's test is skipped for time)."""
    from fusionnet_tf.export.bioimageio import export_bioimageio

    model, _, _, _ = tiny3d
    out = tmp_path_factory.mktemp("bio")
    example = (np.random.default_rng(1).random((3, 64, 64)) * 255).astype("uint8")
    return export_bioimageio(model, out, "aff3d", example=example, weight_formats=("keras_v3",),
                             test=False, offsets=OFFSETS)


def _offsets_file(path):
    return [tuple(o) for o in json.loads(path.read_text())["offsets"]]


# === SavedModel / REST ===

def test_saved_model_has_a_5d_signature_equal_to_keras(tiny3d, saved_model_dir):
    import tensorflow as tf

    _, _, batch, expected = tiny3d
    signature = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    [spec] = signature.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, None, None, None, 1]
    [(name, out_spec)] = signature.structured_outputs.items()
    assert name == "affinities" and out_spec.shape.as_list() == [None, None, None, None, 3]
    result = signature(image=tf.constant(batch))["affinities"].numpy()
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_saved_model_carries_offsets_and_loads_in_predictor(tiny3d, saved_model_dir):
    from fusionnet_tf.inference import Predictor, load_model

    model, _, _, _ = tiny3d
    sidecar = saved_model_dir.parent / "1.offsets.json"  # where Predictor looks
    assert _offsets_file(sidecar) == list(OFFSETS)
    card = json.loads((saved_model_dir / "model_card.json").read_text())
    assert card["offsets"] == [list(o) for o in OFFSETS]
    assert card["input_multiple_zyx"] == list(MULTIPLES)
    assert card["model"]["family"] == "fusionnet3d"
    function = load_model(saved_model_dir)
    assert (function.spatial_dims, function.input_multiple) == (3, MULTIPLES)
    volume = np.random.default_rng(2).random((6, 20, 24)).astype("float32")
    options = dict(tile_shape=(4, 16, 16), overlap=(2, 4, 4), tta=1, engine="plain")
    exported = Predictor(str(saved_model_dir), **options)
    assert exported.offsets == OFFSETS
    np.testing.assert_allclose(exported.predict(volume),
                               Predictor(model, offsets=OFFSETS, **options).predict(volume),
                               atol=1e-5)


@pytest.mark.e2e
def test_rest_server_and_client_serve_the_3d_model(tiny3d, saved_model_dir):
    from fusionnet_tf.export.rest_client import ServingClient, ServingError
    from fusionnet_tf.export.server import ModelServer

    _, _, batch, expected = tiny3d
    server = ModelServer(saved_model_dir.parent, port=0).start()
    try:
        client = ServingClient(server.url)
        assert client.spatial_dims == 3
        np.testing.assert_allclose(client(batch), expected, atol=1e-5)
        with pytest.raises(ServingError, match="multiples of 2, 4, 4"):
            client(batch[:, :3])
    finally:
        server.shutdown()


# === ONNX ===

def test_onnx_has_a_5d_input_and_matches_keras(tiny3d, onnx_file):
    import onnxruntime

    from fusionnet_tf.inference.backends.onnx_runner import OnnxRunner

    _, _, batch, expected = tiny3d
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert len(inp.shape) == 5 and inp.shape[-1] == 1
    result = session.run(None, {inp.name: batch})[0]
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, atol=1e-4)
    runner = OnnxRunner(onnx_file)
    assert (runner.spatial_dims, runner.input_multiple) == (3, MULTIPLES)
    assert _offsets_file(onnx_file.with_name("fusionnet.offsets.json")) == list(OFFSETS)


def test_predict_cli_runs_the_exported_onnx_model(tiny3d, onnx_file, tmp_path):
    import tifffile
    import zarr

    from fusionnet_tf.data import normalize
    from fusionnet_tf.inference import Predictor

    model, _, _, _ = tiny3d
    raw = (np.random.default_rng(3).random((6, 20, 24)) * 255).astype("uint8")
    tifffile.imwrite(tmp_path / "vol.tif", raw)
    out = tmp_path / "aff.zarr"
    assert main(["predict", str(tmp_path / "vol.tif"), "-o", str(out), "--model", str(onnx_file),
                 "--tile-z", "4", "--tile-size", "16", "--overlap", "4", "--tta", "1",
                 "--quiet"]) == 0
    array = zarr.open(str(out), mode="r")
    assert [tuple(o) for o in array.attrs["offsets"]] == list(OFFSETS)
    expected = Predictor(model, tile_shape=(4, 16, 16), overlap=(1, 4, 4), offsets=OFFSETS,
                         tta=1, engine="plain").predict(normalize(raw, mode="slice"))
    np.testing.assert_allclose(np.asarray(array), expected, atol=1e-4)


# === bioimage.io ===

@pytest.mark.e2e
def test_bioimageio_package_validates_with_zyx_axes_and_offset_channels(package):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    from fusionnet_tf.export.bioimageio3d import channel_name

    description = load_description(package, perform_io_checks=True)
    assert isinstance(description, ModelDescr), description.validation_summary.format()
    [inp], [out] = description.inputs, description.outputs
    assert [str(a.id) for a in inp.axes] == ["batch", "z", "y", "x", "channel"]
    assert [str(a.id) for a in out.axes] == ["batch", "z", "y", "x", "channel"]
    assert [str(n) for n in out.axes[-1].channel_names] == [channel_name(o) for o in OFFSETS]
    assert channel_name((-1, 0, 0)) == "dzm1_dy0_dx0"
    assert [a.size.step for a in inp.axes[1:4]] == list(MULTIPLES)
    config = description.config.model_dump()["fusionnet_tf"]
    assert config["offsets"] == [list(o) for o in OFFSETS]
    assert config["architecture"]["family"] == "fusionnet3d"
    assert "3d" in description.tags and "fusionnet3d" not in ("membranes",)
    test_input = np.load(zipfile.ZipFile(package).open("test_input.npy"))
    test_output = np.load(zipfile.ZipFile(package).open("test_output.npy"))
    assert test_input.ndim == 5 and test_output.shape == test_input.shape[:4] + (3,)


@pytest.mark.e2e
def test_bioimageio_package_carries_offsets_and_predicts(tiny3d, package):
    from fusionnet_tf.inference.backends.bioimageio_zip import load_package_model
    from fusionnet_tf.export.bioimageio3d import read_package_offsets

    model, _, batch, expected = tiny3d
    with zipfile.ZipFile(package) as archive:
        assert json.loads(archive.read("offsets.json"))["offsets"] == [list(o) for o in OFFSETS]
    assert read_package_offsets(package) == OFFSETS
    assert _offsets_file(package.with_name("aff3d.offsets.json")) == list(OFFSETS)
    loaded = load_package_model(package)
    np.testing.assert_allclose(np.asarray(loaded(batch)), expected, atol=1e-6)


def test_choose_halo_hides_every_voxel_above_tolerance():
    from fusionnet_tf.export.bioimageio3d import choose_halo

    difference = np.zeros((16, 32, 32), np.float32)
    difference[:3] = 1  # the first 3 sections differ everywhere: z halo 3
    difference[:, :, 30:] = 1  # the last 2 columns differ on every section: yx halo 2
    assert choose_halo(difference, 1e-3, (2, 4)) == (3, 2)
    assert choose_halo(np.zeros((8, 16, 16)), 1e-3, (2, 4)) == (0, 0)
    assert choose_halo(np.ones((8, 16, 16)), 1e-3, (2, 4)) is None


# === 2D-only runtimes and missing offsets ===

@pytest.mark.parametrize("fmt", ["litert", "tensorrt"])
def test_2d_only_runtime_refuses_in_one_line(tiny3d, tmp_path, capsys, fmt):
    _, path, _, _ = tiny3d
    code = main(["export", "--model", str(path), "--format", fmt, "--output",
                 str(tmp_path / "out")])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert f"--format {fmt} exports 2D models only" in line and "saved_model, onnx" in line
    assert not (tmp_path / "out").exists()


def test_litert_library_refuses_a_3d_model(tiny3d, tmp_path):
    from fusionnet_tf.export.litert import export_litert

    with pytest.raises(ValueError, match="2D models only"):
        export_litert(tiny3d[0], tmp_path)
    assert not list(tmp_path.iterdir())


def test_3d_export_without_offsets_file_is_one_line(tiny3d, tmp_path, capsys):
    model, _, _, _ = tiny3d
    model.save(tmp_path / "bare.keras")
    code = main(["export", "--model", str(tmp_path / "bare.keras"), "--format", "onnx",
                 "--output", str(tmp_path / "out")])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "bare.offsets.json" in line
    assert not (tmp_path / "out" / "fusionnet.onnx").exists()
