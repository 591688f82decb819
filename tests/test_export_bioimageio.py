"""bioimage.io packages: export, metadata, validation, bioimageio.core's test, halo, predict.

The session's tiny FusionNet (base 4, depth 2; tests/conftest.py) is exported
once with the CLI; the package, and the .keras/.onnx/.tflite files of the same
model, are shared by the tests; a tiny U-Net is exported once (keras_v3 weights only) for the
metadata tests. bioimageio.core's own test (slow: it runs in a child process
and reloads the model for every size it tries) is marked ``large``. No test
touches the network: every httpx request of this process is recorded and
fails the test, and the test child processes get an unreachable proxy.
"""

import io
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tifffile
from keras import layers

pytest.importorskip("bioimageio.spec")

from fusionnet_tf import build_unet  # noqa: E402
from fusionnet_tf.cli import main  # noqa: E402
from fusionnet_tf.data import normalize, read_stack  # noqa: E402
from fusionnet_tf.export import bioimageio as bio  # noqa: E402
from fusionnet_tf.export.model_card import (FUSIONNET_CITATION, UNET_CITATION,  # noqa: E402
                                            architecture_knobs, detect_architecture)
from fusionnet_tf.inference import Predictor  # noqa: E402
from fusionnet_tf.inference.backends.onnx_runner import OnnxRunner  # noqa: E402
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
def files(tmp_path_factory, tiny_model, tiny_model_file, tiny_onnx, tiny_tflite):
    """The session's tiny model as .keras, .onnx, float32 .tflite and a bioimage.io package
    (exported here with the CLI)."""
    folder = tmp_path_factory.mktemp("bioimageio")
    # no --name: the package is named after the model file, tiny.zip
    code = main(["export", "--model", str(tiny_model_file), "--format", "bioimageio",
                 "--output", str(folder / "packages"), "--no-bioimageio-test"])
    assert code == 0
    return {"keras": tiny_model_file, "onnx": tiny_onnx, "tflite": tiny_tflite,
            "package": folder / "packages" / "tiny.zip", "model": tiny_model}


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
    # a user's FusionNet: the FusionNet paper, no ISBI 2012 claims
    assert [str(c.doi) for c in description.cite] == [FUSIONNET_CITATION[1]]
    assert description.name == "tiny (FusionNet)"
    assert "isbi2012" not in description.tags and "fusionnet" in description.tags
    assert description.config.fusionnet_tf["training_data"] is None
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


@pytest.fixture
def untouched(monkeypatch, tmp_path):
    """Run from an empty folder with ``os.chdir`` refused; returns a check of cwd and env.

    Child processes get an unreachable proxy (no network). The check asserts
    that the working folder and ``KERAS_BACKEND`` are as before and that
    nothing was written into the working folder.
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def refuse(path):
        raise AssertionError(f"os.chdir({str(path)!r}) during an export")

    monkeypatch.setattr(os, "chdir", refuse)
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    before = (os.getcwd(), os.environ.get("KERAS_BACKEND"))

    def check():
        assert (os.getcwd(), os.environ.get("KERAS_BACKEND")) == before
        assert list(cwd.iterdir()) == []

    return check


@pytest.mark.large
def test_bioimageio_core_test_passes_for_every_weight_format(files, tmp_path, untouched):
    work = tmp_path / "work"
    work.mkdir()
    summaries = bio.run_package_tests(files["package"], working_dir=work)
    assert sorted(summaries) == sorted(bio.WEIGHT_FORMATS)
    assert all(summary.status == "passed" for summary in summaries.values())
    # bioimageio.core unpacked the SavedModel in the test's working folder, not in ours
    assert (work / "bioimageio_unzipped_tf_weights").is_dir()
    untouched()


@pytest.mark.large
def test_package_failing_its_test_is_not_written(files, tmp_path, monkeypatch, untouched):
    def wrong_output(model, raw_tile):
        raw, output = make_test_tensors(model, raw_tile)
        return raw, output + 0.25

    make_test_tensors = bio.make_test_tensors
    monkeypatch.setattr(bio, "make_test_tensors", wrong_output)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="test of the keras_v3 weights in .* failed"):
        bio.export_bioimageio(files["model"], out, "broken", weight_formats=("keras_v3",))
    assert list(out.iterdir()) == []
    untouched()


def test_export_whose_test_process_crashes_writes_nothing(unet, tmp_path, monkeypatch,
                                                          untouched):
    monkeypatch.setattr(bio, "_CHILD_CODE", "import sys; sys.exit('bioimageio.core exploded')")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="test process failed: bioimageio.core exploded"):
        bio.export_bioimageio(unet["model"], out, "crash", weight_formats=("keras_v3",))
    assert list(out.iterdir()) == []
    untouched()


@pytest.mark.parametrize("previous", [None, "tensorflow"])
def test_importing_bioimageio_core_keeps_keras_backend(monkeypatch, previous):
    """bioimageio.core's Keras adapter writes its default ("torch") into KERAS_BACKEND on import.

    The adapter module is imported afresh (its module entry removed) with
    bioimageio.core's setting at "torch"; the variable must come back as it
    was, so later Keras processes (Dask, training workers) stay on TensorFlow.
    """
    import sys

    import bioimageio.core
    import bioimageio.core.backends

    name = "bioimageio.core.backends.keras_backend"
    monkeypatch.setattr(bioimageio.core.settings, "keras_backend", "torch")
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(bioimageio.core.backends, "keras_backend", raising=False)
    if previous is None:
        monkeypatch.delenv("KERAS_BACKEND", raising=False)
    else:
        monkeypatch.setenv("KERAS_BACKEND", previous)
    assert bio.import_bioimageio_core() is bioimageio.core
    assert name in sys.modules  # the adapter was imported, so it did set the variable
    assert os.environ.get("KERAS_BACKEND") == previous


# === What the package says about the model ===

@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """A user's tiny U-Net (base 2, depth 2): the model, its .keras file and ``my_unet.zip``.

    The package has keras_v3 weights only and was not tested by bioimageio.core.
    """
    folder = tmp_path_factory.mktemp("unet")
    keras.utils.set_random_seed(0)
    model = build_unet(base_filters=2, depth=2)
    model.save(folder / "unet.keras")
    package = bio.export_bioimageio(model, folder, "my_unet", weight_formats=("keras_v3",),
                                    tags=["lab-x"], test=False)
    return {"model": model, "keras": folder / "unet.keras", "package": package}


def _section(markdown, title):
    return markdown.split(f"## {title}\n")[1].split("\n## ")[0].strip()


def test_user_unet_is_described_as_a_unet_with_its_name(unet):
    from bioimageio.spec import load_model_description

    unet_package = unet["package"]
    description = load_model_description(unet_package)
    assert description.name == "my_unet (U-Net)"
    assert description.config.bioimageio.architecture_type == "U-Net"
    assert description.config.bioimageio.architecture_description.startswith(
        "U-Net (Ronneberger et al. 2015)")
    assert "U-Net" in description.description and "FusionNet" not in description.description
    assert [str(c.doi) for c in description.cite] == [UNET_CITATION[1]]
    assert {"unet", "lab-x", "electron-microscopy"} <= set(description.tags)
    assert not {"fusionnet", "residual", "isbi2012", "connectomics", "neurons"} & set(
        description.tags)
    assert description.config.fusionnet_tf["training_data"] is None
    assert [author.name for author in description.authors] == list(bio.UNKNOWN_AUTHORS)
    docs = _member(unet_package, "README.md").decode()
    assert docs.startswith("# my_unet (U-Net): membrane segmentation (U-Net, base 2, depth 2)")
    assert "Not stated" in _section(docs, "Training data")
    assert "ISBI" not in _section(docs, "Training data") + _section(docs, "Citations")
    assert "Quan" not in docs and "Arganda" not in docs
    card = json.loads((unet_package.parent / "my_unet.model_card.json").read_text())
    assert card["model"]["family"] == "unet" and card["bioimageio"]["title"] == "U-Net"


def test_shipped_model_keeps_its_isbi_metadata():
    from fusionnet_tf.pretrained import load_pretrained

    model = load_pretrained()
    meta = bio.package_metadata(model, "fusionnet_isbi2012", shipped=True)
    assert meta["name"] == "fusionnet_isbi2012 (FusionNet)"
    assert meta["training_data"] == bio.TRAINING_DATA
    assert "FusionNet (Quan et al. 2016)" in meta["description"] and "ISBI 2012" in meta[
        "description"]
    assert [doi for _, doi in meta["cite"]] == [FUSIONNET_CITATION[1], bio.ISBI_CITATION[1],
                                                bio.DATA_CITATION[1]]
    assert {"fusionnet", "isbi2012", "connectomics", "neurons", "onnx"} <= set(meta["tags"])
    assert meta["authors"] == ["fusionnet-tf contributors"]
    knobs = dict(architecture_knobs(model), keras="3")
    halo = {"halo": 154, "tile": 1024, "tolerance": 1e-3}
    docs = bio.documentation(knobs, halo, (320, 16), bio.WEIGHT_FORMATS, None, meta,
                             "a real ISBI 2012 test tile")
    assert _section(docs, "Training data").startswith("ISBI 2012 EM segmentation challenge: ")
    assert "Arganda-Carreras" in _section(docs, "Citations")
    # the same network exported as a user's model claims none of it
    plain = bio.package_metadata(model, "fusionnet_isbi2012")
    assert plain["training_data"] is None and plain["authors"] == list(bio.UNKNOWN_AUTHORS)
    assert "isbi2012" not in plain["tags"] and "ISBI" not in plain["description"]
    assert [doi for _, doi in plain["cite"]] == [FUSIONNET_CITATION[1]]


def test_metadata_from_the_user_and_refusals(unet):
    unet = unet["model"]
    meta = bio.package_metadata(unet, "seg.v2", description="My membranes.",
                                training_data="12 slices of my SBEM stack", tags=[" lab-x ", ""],
                                authors=["A. User"], formats=("keras_v3",))
    assert meta["name"] == "seg-v2 (U-Net)" and meta["description"] == "My membranes."
    assert meta["training_data"] == {"description": "12 slices of my SBEM stack"}
    assert meta["tags"][-1] == "lab-x" and "" not in meta["tags"] and "onnx" not in meta["tags"]
    assert meta["authors"] == ["A. User"]
    with pytest.raises(ValueError, match="shipped=True.*is a U-Net"):
        bio.package_metadata(unet, "x", shipped=True)
    with pytest.raises(ValueError, match="`description` must be a non-empty string"):
        bio.package_metadata(unet, "x", description=" ")
    renamed = keras.Model(unet.inputs, unet.outputs, name="functional_7")
    assert detect_architecture(renamed) == "unet"  # the layers tell, not the name
    inputs = keras.Input((None, None, 1))
    custom = keras.Model(inputs, layers.Conv2D(1, 3, padding="same")(inputs), name="mine")
    meta = bio.package_metadata(custom, "mine")
    assert meta["architecture"] is None and meta["cite"] == [] and meta["title"] == "mine"


def test_cli_states_isbi_only_for_the_shipped_model(unet, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    calls = []

    def fake_export(model, output_dir, name, **kwargs):
        calls.append(dict(kwargs, name=name, family=detect_architecture(model)))
        return Path(output_dir) / f"{name}.zip"

    monkeypatch.setattr(bio, "export_bioimageio", fake_export)
    base = ["export", "--format", "bioimageio", "--output", str(tmp_path)]
    assert main(base + ["--model", "pretrained"]) == 0
    assert main(base + ["--model", str(unet["keras"]), "--name", "mine", "--description",
                        "My membranes.", "--training-data", "my SBEM stack", "--tags",
                        "lab-x, sbem ,", "--author", "A. User", "--author", "B. User"]) == 0
    shipped, mine = calls
    assert shipped["shipped"] is True and shipped["name"] == "fusionnet_isbi2012"
    assert (shipped["description"], shipped["training_data"], shipped["tags"],
            shipped["authors"]) == (None, None, [], None)
    assert mine["shipped"] is False and mine["model_card"] is None and mine["family"] == "unet"
    assert (mine["name"], mine["description"], mine["training_data"], mine["tags"],
            mine["authors"]) == ("mine", "My membranes.", "my SBEM stack", ["lab-x", "sbem"],
                                 ["A. User", "B. User"])
    capsys.readouterr()
    code = main(["export", "--model", str(unet["keras"]), "--format", "onnx", "--output",
                 str(tmp_path), "--training-data", "x"])
    assert code == 2 and "--training-data applies to --format bioimageio only" in (
        capsys.readouterr().err)


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

    from fusionnet_tf.inference.backends.bioimageio_zip import load_package_model

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
        load_package_model(no_keras)
    percentiles = repack("percentiles.zip", lambda d: d["inputs"][0]["preprocessing"][1][
        "kwargs"].update(max_percentile=99.8))
    with pytest.raises(ValueError, match="not per-slice min-max"):
        load_package_model(percentiles)
    channel_first = repack("channel_first.zip", lambda d: d["inputs"][0].update(
        axes=[d["inputs"][0]["axes"][i] for i in (0, 3, 1, 2)]))
    with pytest.raises(ValueError, match=r"needs \(batch, y, x, channel\)"):
        load_package_model(channel_first)
    x_before_y = repack("x_before_y.zip", lambda d: d["inputs"][0].update(
        axes=[d["inputs"][0]["axes"][i] for i in (0, 2, 1, 3)]))
    with pytest.raises(ValueError, match=r"has axes \['batch', 'x', 'y', 'channel'\]"):
        load_package_model(x_before_y)
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        load_package_model(tmp_path / "plain.zip")
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        load_package_model(tmp_path / "missing.zip")


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
    from fusionnet_tf.inference.backends.litert_runner import LiteRTRunner

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
