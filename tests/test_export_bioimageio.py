"""bioimage.io packages: export, validation, bioimageio.core's test, halo, predict --model.

One tiny FusionNet (base 4, depth 2) is exported once with the CLI; the
package, and the .keras/.onnx/.tflite files of the same model, are shared by
the tests. bioimageio.core's own test (slow: it reloads the model for every
size it tries) is marked ``large``. No test touches the network: every httpx
request is recorded and fails the test.
"""

import io
import json
import zipfile

import keras
import numpy as np
import pytest
import tifffile
from keras import layers

pytest.importorskip("bioimageio.spec")

from fusionnet_tf import build_fusionnet  # noqa: E402
from fusionnet_tf.cli import main  # noqa: E402
from fusionnet_tf.data import normalize, read_stack  # noqa: E402
from fusionnet_tf.export import bioimageio as bio  # noqa: E402
from fusionnet_tf.export.litert import export_litert  # noqa: E402
from fusionnet_tf.export.onnx import OnnxRunner, export_onnx  # noqa: E402
from fusionnet_tf.inference import Predictor  # noqa: E402
from fusionnet_tf.pretrained import example_path  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Fail on any HTTP request bioimageio.spec/core would send (URL checks, downloads)."""
    import httpx

    calls = []

    def refuse(self, request, *args, **kwargs):
        calls.append(str(request.url))
        raise httpx.ConnectError(f"network access in a test: {request.url}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.Client, "send", refuse)
        yield calls
    assert calls == [], f"network requests: {calls}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model as .keras, .onnx, float32 .tflite and a bioimage.io package (CLI)."""
    folder = tmp_path_factory.mktemp("bioimageio")
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=2)
    model.save(folder / "tiny.keras")
    onnx_path = export_onnx(model, folder, "tiny")
    tflite_path = export_litert(model, folder, "tiny")
    # no --name: the package is named after the model file, tiny.zip
    code = main(["export", "--model", str(folder / "tiny.keras"), "--format", "bioimageio",
                 "--output", str(folder / "packages"), "--no-bioimageio-test"])
    assert code == 0
    return {"keras": folder / "tiny.keras", "onnx": onnx_path, "tflite": tflite_path,
            "package": folder / "packages" / "tiny.zip", "model": model}


def _member(package, name):
    with zipfile.ZipFile(package) as archive:
        return archive.read(name)


def _npy(package, name):
    return np.load(io.BytesIO(_member(package, name)))


# === The package ===

def test_package_is_valid_with_declared_axes_sizes_weights(files):
    from bioimageio.spec import load_model_description

    description = load_model_description(files["package"])
    warnings = [w.msg for detail in description.validation_summary.details
                for w in detail.warnings]
    # The one warning left: a maintainer needs a GitHub user name, which the spec
    # checks online; the package names none.
    assert [msg for msg in warnings if "github_user" not in msg] == []
    raw, = description.inputs
    output, = description.outputs
    assert [str(a.id) for a in raw.axes] == ["batch", "y", "x", "channel"]
    assert [str(a.id) for a in output.axes] == ["batch", "y", "x", "channel"]
    halo = output.axes[1].halo
    assert output.axes[2].halo == halo > 0
    size = raw.axes[1].size
    assert size.step == 4 and size.min % 4 == 0 and 2 * halo < size.min <= 2 * halo + 4
    assert set(description.weights.model_fields_set) >= {"keras_v3", "onnx",
                                                         "tensorflow_saved_model_bundle"}
    assert description.weights.keras_v3.parent is None
    assert description.weights.onnx.parent == "keras_v3"
    assert description.weights.tensorflow_saved_model_bundle.parent == "keras_v3"
    assert description.weights.keras_v3.backend[0] == "tensorflow"
    assert description.weights.onnx.opset_version == bio.onnx_opset(files["onnx"])
    assert [str(c.doi) for c in description.cite] == [
        doi for _, doi in bio.CITATIONS + (bio.DATA_CITATION,)]
    assert str(description.license) == "MIT"
    tolerance, = description.config.bioimageio.reproducibility_tolerance
    assert tolerance.absolute_tolerance == bio.REPRODUCIBILITY["absolute_tolerance"]
    assert "## Validation" in _member(files["package"], "README.md").decode()
    card = json.loads((files["package"].parent / "tiny.model_card.json").read_text())
    assert card["format"] == "bioimageio" and card["halo"]["halo"] == halo


def test_declared_halo_is_the_measured_border_effect(files):
    from bioimageio.spec import load_model_description

    description = load_model_description(files["package"])
    images = normalize(read_stack(example_path()), mode="slice")
    measured = bio.measure_halo(files["model"], images)
    assert description.outputs[0].axes[1].halo == measured["halo"]
    profile = measured["profile"]
    assert profile[measured["halo"] - 1] > bio.HALO_TOLERANCE
    assert max(profile[measured["halo"]:]) <= bio.HALO_TOLERANCE


@pytest.mark.parametrize("convs", [1, 3])
def test_measure_halo_of_stacked_convolutions(convs):
    """n stacked 3x3 convolutions (no pooling) see the zero padding n pixels deep."""
    inputs = keras.Input((None, None, 1))
    x = inputs
    for _ in range(convs):
        x = layers.Conv2D(1, 3, padding="same", kernel_initializer="ones",
                          bias_initializer="zeros")(x)
    model = keras.Model(inputs, x)
    images = normalize(read_stack(example_path())[:1, :256, :256], mode="slice")
    assert bio.measure_halo(model, images, tiles=(64,))["halo"] == convs


def test_input_size_minimum_exceeds_twice_the_halo():
    assert bio.input_size(34, 4) == (72, 4)
    assert bio.input_size(32, 4) == (68, 4)
    assert bio.input_size(0, 16) == (16, 16)


def test_test_tensors_are_a_real_tile_and_the_keras_prediction(files):
    raw = _npy(files["package"], "test_input.npy")
    expected = _npy(files["package"], "test_output.npy")
    assert raw.shape == expected.shape and raw.shape[0] == 1 and raw.shape[-1] == 1
    side = raw.shape[1]
    example = read_stack(example_path())[0]
    y0 = (example.shape[0] - side) // 2
    np.testing.assert_array_equal(raw[0, ..., 0], example[y0:y0 + side, y0:y0 + side])
    predictor = Predictor(files["model"], tile_shape=side, overlap=8, tta=1)
    predicted = predictor.predict(normalize(raw[0, ..., 0], mode="slice"))
    np.testing.assert_allclose(predicted, expected[0, ..., 0],
                               atol=bio.REPRODUCIBILITY["absolute_tolerance"],
                               rtol=bio.REPRODUCIBILITY["relative_tolerance"])


def test_each_weight_format_reproduces_the_test_output(files, tmp_path):
    """keras_v3, the SavedModel bundle's 'serve' endpoint and onnx, on the package's files."""
    import tensorflow as tf

    raw = _npy(files["package"], "test_input.npy")
    expected = _npy(files["package"], "test_output.npy")
    image = normalize(raw[0, ..., 0], mode="slice")[None, :, :, None]
    with zipfile.ZipFile(files["package"]) as archive:
        archive.extractall(tmp_path / "package")
        with zipfile.ZipFile(tmp_path / "package" / "tf_saved_model_bundle.zip") as bundle:
            bundle.extractall(tmp_path / "saved_model")
    outputs = {
        "keras_v3": keras.saving.load_model(tmp_path / "package" / "weights.keras")(image),
        "onnx": OnnxRunner(tmp_path / "package" / "weights.onnx")(image),
        "tensorflow_saved_model_bundle": layers.TFSMLayer(
            str(tmp_path / "saved_model"), call_endpoint="serve")(tf.constant(image))[
                bio.OUTPUT_ID],
    }
    for fmt, output in outputs.items():
        np.testing.assert_allclose(np.asarray(output), expected, err_msg=fmt,
                                   atol=bio.REPRODUCIBILITY["absolute_tolerance"],
                                   rtol=bio.REPRODUCIBILITY["relative_tolerance"])


def test_preprocessing_is_per_slice_min_max(files):
    """bioimageio.core's own preprocessing of the package equals normalize(mode='slice')."""
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.core.proc_setup import setup_pre_and_postprocessing
    from bioimageio.spec import load_model_description

    description = load_model_description(files["package"])
    steps = [step for step in description.inputs[0].preprocessing if step.id != "ensure_dtype"]
    assert [step.id for step in steps] == ["scale_range"]
    rng = np.random.default_rng(0)
    planes = [rng.integers(100, 3000, (72, 76)), np.full((72, 76), 7),
              rng.integers(0, 256, (72, 76))]
    processing = setup_pre_and_postprocessing(description, [])
    for plane in np.asarray(planes, np.uint16):
        sample = create_sample_for_model(description,
                                         inputs=plane[None, :, :, None].astype(np.float32))
        for operator in processing.pre:
            operator(sample)
        result = sample.members[bio.INPUT_ID].data.values[0, ..., 0]
        np.testing.assert_allclose(result, normalize(plane, mode="slice"), rtol=0, atol=1e-6)


def test_cover_and_samples_are_images(files):
    import imageio.v3 as iio

    cover = iio.imread(_member(files["package"], "cover.png"), extension=".png")
    assert cover.ndim == 3 and cover.shape[1] == 2 * cover.shape[0]
    raw = _npy(files["package"], "test_input.npy")
    sample = tifffile.imread(io.BytesIO(_member(files["package"], "sample_input.tif")))
    np.testing.assert_array_equal(sample, raw[0, ..., 0])


@pytest.mark.large
def test_bioimageio_core_test_passes_for_every_weight_format(files, tmp_path):
    summaries = bio.run_package_tests(files["package"], working_dir=tmp_path)
    assert sorted(summaries) == sorted(bio.WEIGHT_FORMATS)
    assert all(summary.status == "passed" for summary in summaries.values())


@pytest.mark.large
def test_package_failing_its_test_is_not_written(files, tmp_path, monkeypatch):
    def wrong_output(model, raw_tile):
        raw, output = make_test_tensors(model, raw_tile)
        return raw, output + 0.25

    make_test_tensors = bio.make_test_tensors
    monkeypatch.setattr(bio, "make_test_tensors", wrong_output)
    with pytest.raises(ValueError, match="test of the keras_v3 weights in .* failed"):
        bio.export_bioimageio(files["model"], tmp_path, "broken", weight_formats=("keras_v3",))
    assert list(tmp_path.iterdir()) == []


# === Bad input ===

def test_export_rejects_unknown_weights_names_and_models(files, tmp_path):
    model = files["model"]
    with pytest.raises(ValueError, match="pytorch_state_dict"):
        bio.export_bioimageio(model, tmp_path, weight_formats=("keras_v3", "pytorch_state_dict"))
    with pytest.raises(ValueError, match="including 'keras_v3'"):
        bio.export_bioimageio(model, tmp_path, weight_formats=("onnx",))
    with pytest.raises(ValueError, match="path separators"):
        bio.export_bioimageio(model, tmp_path, name="../escape")
    inputs = keras.Input((None, None, 1))
    two_outputs = keras.Model(inputs, [layers.Conv2D(1, 1)(inputs), layers.Conv2D(1, 1)(inputs)])
    with pytest.raises(ValueError, match="single-input single-output"):
        bio.export_bioimageio(two_outputs, tmp_path)
    rgb = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match=r"2D one-channel network"):
        bio.export_bioimageio(keras.Model(rgb, layers.Conv2D(1, 1)(rgb)), tmp_path)
    fixed = keras.Input((64, 64, 1))
    with pytest.raises(ValueError, match=r"any H and W"):
        bio.export_bioimageio(keras.Model(fixed, layers.Conv2D(1, 1)(fixed)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_errors_exit_2(files, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    code = main(["export", "--model", str(files["keras"]), "--format", "bioimageio",
                 "--output", str(blocker), "--no-bioimageio-test"])
    assert code == 2
    assert "not_a_folder" in capsys.readouterr().err
    inputs = keras.Input((None, None, 2))
    keras.Model(inputs, layers.Conv2D(1, 1)(inputs)).save(tmp_path / "two_channels.keras")
    code = main(["export", "--model", str(tmp_path / "two_channels.keras"), "--format",
                 "bioimageio", "--output", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("fusionnet export: error:") and "one-channel" in last
    code = main(["export", "--model", str(files["keras"]), "--format", "bioimageio",
                 "--output", str(tmp_path / "out"), "--name", "a/b"])
    assert code == 2 and "path separators" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_load_package_model_refuses_what_predict_cannot_run(files, tmp_path):
    import yaml

    description = yaml.safe_load(_member(files["package"], "rdf.yaml"))

    def repack(name, change):
        changed = yaml.safe_load(yaml.safe_dump(description))
        change(changed)
        path = tmp_path / name
        with zipfile.ZipFile(files["package"]) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.namelist():
                data = source.read(item)
                target.writestr(item, yaml.safe_dump(changed) if item == "rdf.yaml" else data)
        return path

    no_keras = repack("no_keras.zip", lambda d: d["weights"].pop("keras_v3"))
    with pytest.raises(ValueError, match="no keras_v3 weights"):
        bio.load_package_model(no_keras)
    percentiles = repack("percentiles.zip", lambda d: d["inputs"][0]["preprocessing"][1][
        "kwargs"].update(max_percentile=99.8))
    with pytest.raises(ValueError, match="not per-slice min-max"):
        bio.load_package_model(percentiles)
    channel_first = repack("channel_first.zip", lambda d: d["inputs"][0].update(
        axes=[d["inputs"][0]["axes"][i] for i in (0, 3, 1, 2)]))
    with pytest.raises(ValueError, match=r"needs \(batch, y, x, channel\)"):
        bio.load_package_model(channel_first)
    x_before_y = repack("x_before_y.zip", lambda d: d["inputs"][0].update(
        axes=[d["inputs"][0]["axes"][i] for i in (0, 2, 1, 3)]))
    with pytest.raises(ValueError, match=r"has axes \['batch', 'x', 'y', 'channel'\]"):
        bio.load_package_model(x_before_y)
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        bio.load_package_model(tmp_path / "plain.zip")
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        bio.load_package_model(tmp_path / "missing.zip")


# === fusionnet predict --model package.zip / .onnx / .tflite ===

@pytest.fixture(scope="module")
def predict_input(tmp_path_factory):
    """(2, 150, 130) uint8 EM crops: 3 tiles of 64 per axis, so tile alignment matters."""
    path = tmp_path_factory.mktemp("predict") / "input.tif"
    tifffile.imwrite(path, read_stack(example_path())[:2, 100:250, 200:330])
    return path


def _predict(model, input_path, output):
    code = main(["predict", str(input_path), "-o", str(output), "--model", str(model),
                 "--tile-size", "64", "--overlap", "16", "--tta", "4", "--batch-size", "3",
                 "--quiet"])
    assert code == 0
    return tifffile.imread(output)


def test_predict_with_package_onnx_tflite_equals_keras(files, predict_input, tmp_path):
    reference = _predict(files["keras"], predict_input, tmp_path / "keras.tif")
    np.testing.assert_array_equal(
        _predict(files["package"], predict_input, tmp_path / "package.tif"), reference)
    for kind in ("onnx", "tflite"):
        np.testing.assert_allclose(_predict(files[kind], predict_input, tmp_path / f"{kind}.tif"),
                                   reference, rtol=0, atol=1e-5, err_msg=kind)


def test_exported_runners_know_their_input_multiple(files):
    from fusionnet_tf.export.litert import LiteRTRunner

    assert OnnxRunner(files["onnx"]).input_multiple == 4
    assert LiteRTRunner(files["tflite"]).input_multiple == 4
    with pytest.raises(ValueError, match="multiple of 4"):
        Predictor(files["onnx"], tile_shape=66, overlap=16)


def test_predict_model_errors_exit_2(files, predict_input, tmp_path, capsys):
    for model, message in ((tmp_path / "missing.zip", "missing.zip"),
                           (tmp_path / "missing.onnx", "missing.onnx")):
        code = main(["predict", str(predict_input), "-o", str(tmp_path / "out.tif"),
                     "--model", str(model), "--quiet"])
        assert code == 2 and message in capsys.readouterr().err
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    code = main(["predict", str(predict_input), "-o", str(tmp_path / "out.tif"),
                 "--model", str(weights), "--quiet"])
    assert code == 2 and ".tflite" in capsys.readouterr().err
    code = main(["predict", str(predict_input), "-o", str(tmp_path / "out.tif"),
                 "--model", str(files["onnx"]), "--precision", "mixed_bfloat16", "--quiet"])
    assert code == 2 and "Keras models only" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_importing_bioimageio_core_keeps_keras_on_tensorflow():
    """bioimageio.core sets KERAS_BACKEND=torch on import; later Keras subprocesses must not see it."""
    import os
    import subprocess
    import sys

    code = ("import os; from fusionnet_tf.export.bioimageio import import_bioimageio_core; "
            "import_bioimageio_core(); import bioimageio.core.backends.keras_backend; "
            "print(os.environ.get('KERAS_BACKEND'))")
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "tensorflow"
