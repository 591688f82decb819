"""Export parity: SavedModel (all signatures), LiteRT (4 modes), ONNX, TensorRT errors, CLI.

One tiny FusionNet (base 4, depth 2) is trained briefly on synthetic membranes
so that its output is structured and the int8 Dice check means something.
"""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from fusionnet_tf import build_fusionnet
from fusionnet_tf.cli import main
from fusionnet_tf.data import normalize
from fusionnet_tf.export import whole_image
from fusionnet_tf.export.calibration import representative_tiles, synthetic_membranes
from fusionnet_tf.export.litert import convert_tflite, export_litert
from fusionnet_tf.export.model_card import card_path_for
from fusionnet_tf.export.onnx import export_onnx
from fusionnet_tf.export.saved_model import (export_plain_saved_model, export_saved_model,
                                             list_versions, next_version)
from fusionnet_tf.export.tensorrt import (TensorRTUnavailable, export_tensorrt,
                                          tensorrt_missing_reason)
from fusionnet_tf.inference import Predictor, tiling
from fusionnet_tf.inference.backends.litert_runner import LiteRTRunner
from fusionnet_tf.inference.backends.onnx_runner import OnnxRunner

TILE, OVERLAP, BATCH = 32, 8, 3


def _recalibrate_batchnorm(model, images):
    """Set BN moving statistics to the statistics of ``images`` (short training)."""
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer in norms:
        layer.momentum = 0.99


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    images, labels = synthetic_membranes(48, 32, cells=5, width=1.0, seed=1)
    net = build_fusionnet(base_filters=4, depth=2)
    net.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy",
                jit_compile=False)
    net.fit(images[..., None], labels[..., None].astype("float32"), batch_size=8, epochs=4,
            verbose=0)
    _recalibrate_batchnorm(net, images[:32, ..., None])
    return net


@pytest.fixture(scope="module")
def eval_images():
    """(4, 64, 64) float32 structured membranes in [0, 1] and their labels."""
    return synthetic_membranes(4, 64, cells=20, width=1.0, seed=5)


@pytest.fixture(scope="module")
def model_base(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    export_saved_model(model, base, "fusionnet", tile_size=TILE, overlap=OVERLAP,
                       batch_size=BATCH, card_extra={"note": "test"})
    return base


@pytest.fixture(scope="module")
def loaded(model_base):
    return tf.saved_model.load(str(model_base / "fusionnet" / "1"))


@pytest.fixture(scope="module")
def plain_saved_model(model, tmp_path_factory):
    return export_plain_saved_model(model, tmp_path_factory.mktemp("plain") / "model")


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# === SavedModel ===
def test_saved_model_layout_and_card(model_base):
    version_dir = model_base / "fusionnet" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert list_versions(model_base / "fusionnet") == [1]
    assert next_version(model_base / "fusionnet") == 2
    assert not [p for p in (model_base / "fusionnet").iterdir() if p.name.startswith(".")]
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["format"] == "saved_model" and card["version"] == 1 and card["note"] == "test"
    assert card["model"]["depth"] == 2 and card["model"]["base_filters"] == 4
    assert card["signatures"]["whole_image_tiling"]["tile_size"] == TILE
    assert "min-max" in card["normalization"] and "1 = membrane" in card["output"]["convention"]
    assert card["versions"]["tensorflow"] == tf.__version__


def test_saved_model_signatures(loaded):
    assert set(loaded.signatures) == {"serving_default", "whole_image", "whole_image_png"}
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, None, None, 1]
    spec = loaded.signatures["whole_image"].structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None]


def test_serving_default_matches_keras(model, loaded):
    x = np.random.default_rng(0).random((2, 32, 48, 1), dtype=np.float32)
    out = loaded.signatures["serving_default"](image=tf.constant(x))["membrane_probability"]
    np.testing.assert_allclose(out.numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_serving_default_rejects_sizes_not_multiple_of_depth(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 2\\*\\*depth = 4"):
        loaded.signatures["serving_default"](image=tf.zeros((1, 30, 32, 1)))


@pytest.mark.parametrize("shape", [(2, 50, 70), (1, 20, 24), (1, 33, 32)])
def test_whole_image_matches_predictor(model, loaded, shape):
    raw = (np.random.default_rng(1).random(shape) * 200 + 20).astype(np.uint8)
    out = loaded.signatures["whole_image"](image=tf.constant(raw))["membrane_probability"]
    predictor = Predictor(model, tile_shape=TILE, overlap=OVERLAP, tta=1, batch_size=BATCH,
                          fold_batchnorm=False)
    expected = predictor.predict(normalize(raw, mode="slice"))
    assert out.shape == shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_whole_image_normalizes_each_slice_on_its_own(model, loaded):
    rng = np.random.default_rng(7)
    texture = rng.random((2, 40, 48))
    raw = np.stack([20 + texture[0] * 60, 120 + texture[1] * 130]).astype(np.uint8)  # 20-80, 120-250
    out = loaded.signatures["whole_image"](image=tf.constant(raw))["membrane_probability"].numpy()
    predictor = Predictor(model, tile_shape=TILE, overlap=OVERLAP, tta=1, batch_size=BATCH,
                          fold_batchnorm=False)
    np.testing.assert_allclose(out, predictor.predict(normalize(raw, mode="slice")), atol=1e-5)
    # the test can tell: normalizing the whole stack at once gives another result
    whole_stack = predictor.predict(normalize(raw, mode="global"))
    assert np.abs(out - whole_stack).max() > 1e-2


def test_whole_image_png_equals_uint8_signature(loaded):
    raw = (np.random.default_rng(2).random((40, 36)) * 255).astype(np.uint8)
    png = tf.io.encode_png(raw[..., None])
    from_png = loaded.signatures["whole_image_png"](image_bytes=tf.stack([png]))
    from_array = loaded.signatures["whole_image"](image=tf.constant(raw[None]))
    np.testing.assert_array_equal(from_png["membrane_probability"].numpy(),
                                  from_array["membrane_probability"].numpy())


def test_saved_model_never_overwrites_a_version(model, model_base):
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        export_saved_model(model, model_base, "fusionnet", version=1, tile_size=TILE,
                           overlap=OVERLAP)
    with pytest.raises(ValueError, match="name"):
        export_saved_model(model, model_base, "../escape", tile_size=TILE, overlap=OVERLAP)
    with pytest.raises(ValueError, match="tile"):
        export_saved_model(model, model_base, "fusionnet", tile_size=30, overlap=OVERLAP)


# === In-graph tiling against the NumPy reference ===
@pytest.mark.parametrize("tile,overlap,align", [(32, 8, 4), (64, 16, 16), (16, 0, 1), (8, 7, 1)])
def test_graph_tile_steps_match_tiling(tile, overlap, align):
    for size in (tile, tile + 1, tile + align, 2 * tile - 3, 3 * tile + 5, 257):
        graph = whole_image.compute_steps(tf.constant(size), tile, overlap, align).numpy()
        assert graph.tolist() == tiling.compute_steps(size, tile, overlap, align), size


@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (40, 3), (2, 2), (16, 40), (33, 1)])
def test_graph_padding_matches_tiling(shape):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(whole_image.pad_to_tile(tf.constant(image), 16).numpy(),
                                  tiling.pad_to_tile(image, 16))


def test_graph_normalization_matches_data_normalize():
    rng = np.random.default_rng(3)
    for raw in (rng.integers(30, 200, (20, 30)).astype(np.uint8), np.full((8, 8), 7, np.uint8)):
        np.testing.assert_array_equal(whole_image.normalize_slice(tf.constant(raw)).numpy(),
                                      normalize(raw, mode="slice"))


# === ONNX ===
def test_onnx_matches_keras(model, tmp_path):
    path = export_onnx(model, tmp_path, "tiny")
    assert path == tmp_path / "tiny.onnx"
    card = json.loads(card_path_for(path).read_text())
    assert card["format"] == "onnx" and card["artifact"] == "tiny.onnx"
    x = np.random.default_rng(4).random((2, 32, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(OnnxRunner(path)(x), model(x, training=False).numpy(), atol=1e-5)


# === LiteRT ===
def test_litert_float32_matches_keras(model, plain_saved_model, eval_images):
    x = eval_images[0][:2, ..., None]
    fp32 = LiteRTRunner(convert_tflite(plain_saved_model, "none"))(x)
    np.testing.assert_allclose(fp32, model(x, training=False).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def tflite_float32(plain_saved_model):
    return convert_tflite(plain_saved_model, "none")


def test_litert_input_multiple_counts_the_poolings(tflite_float32):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        runner = LiteRTRunner(tflite_float32)
    assert runner.input_multiple == 4  # FusionNet depth 2: two 2x2 poolings
    predictor = Predictor(runner, tile_shape=TILE, overlap=OVERLAP, progress=False)
    assert predictor.align == 4


def test_litert_runner_warns_with_the_reason_when_it_cannot_list_ops(tflite_float32,
                                                                     monkeypatch):
    from fusionnet_tf.inference.backends import litert_runner

    monkeypatch.delattr(litert_runner.interpreter_class(), "_get_ops_details")
    with pytest.warns(RuntimeWarning, match=r"cannot list the ops of the LiteRT model "
                                            r"\(AttributeError.*_get_ops_details.*--align 16"):
        runner = LiteRTRunner(tflite_float32)
    assert runner.input_multiple is None


def test_load_model_runs_exported_files_with_their_runtime_options(model, tflite_float32,
                                                                  tmp_path, eval_images):
    from fusionnet_tf.inference import load_model

    x = eval_images[0][:2, ..., None]
    expected = model(x, training=False).numpy()
    onnx_runner = load_model(export_onnx(model, tmp_path, "tiny"),
                             providers=["CPUExecutionProvider"])
    assert isinstance(onnx_runner, OnnxRunner)
    assert onnx_runner.session.get_providers() == ["CPUExecutionProvider"]
    (tmp_path / "tiny.tflite").write_bytes(tflite_float32)
    litert_runner = load_model(tmp_path / "tiny.tflite", num_threads=1)
    assert isinstance(litert_runner, LiteRTRunner) and litert_runner.input_multiple == 4
    for runner in (onnx_runner, litert_runner):
        np.testing.assert_allclose(runner(x), expected, atol=1e-5)


def test_export_litert_fp16_file_card_and_parity(model, tmp_path, eval_images):
    path = export_litert(model, tmp_path, "tiny", "fp16")
    assert path == tmp_path / "tiny_fp16.tflite" and path.stat().st_size > 0
    card = json.loads((tmp_path / "tiny_fp16.model_card.json").read_text())
    assert card["quantization"] == "fp16" and "1e-2" in card["tolerance_vs_keras"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    x = eval_images[0][:2, ..., None]
    expected = model(x, training=False).numpy()
    fp16 = LiteRTRunner(path)(x)
    np.testing.assert_allclose(fp16, expected, atol=1e-2)
    assert np.abs(fp16 - expected).max() > 0  # really a different (quantized) model


@pytest.mark.parametrize("quant_type", ["dynamic-int8", "int8"])
def test_litert_int8_membrane_dice(model, plain_saved_model, eval_images, quant_type):
    images, labels = eval_images
    x = images[..., None]
    expected = model(x, training=False).numpy()[..., 0]
    # the float model is structured: it finds the synthetic membranes
    assert 0.1 < (expected > 0.5).mean() < 0.6
    assert _dice(expected > 0.5, labels > 0) > 0.8
    calibration = representative_tiles(synthetic_membranes(8, 64, cells=20, seed=9)[0], 32, 16)
    data = convert_tflite(plain_saved_model, quant_type, calibration)
    quantized = LiteRTRunner(data)(x)[..., 0]
    assert _dice(quantized > 0.5, expected > 0.5) >= 0.95
    assert np.abs(quantized - expected).max() > 1e-4


def test_convert_tflite_rejects_bad_arguments(plain_saved_model, tmp_path):
    with pytest.raises(ValueError, match="quant_type"):
        convert_tflite(plain_saved_model, "int4")
    with pytest.raises(ValueError, match="representative_data"):
        convert_tflite(plain_saved_model, "int8")
    with pytest.raises(FileNotFoundError, match="SavedModel"):
        convert_tflite(tmp_path / "missing", "none")


# === TensorRT (not available on CPU machines) ===
needs_no_tensorrt = pytest.mark.skipif(
    tensorrt_missing_reason("tf-trt") is None, reason="this machine has TensorRT")


@needs_no_tensorrt
@pytest.mark.parametrize("route", ["tf-trt", "onnx"])
def test_tensorrt_missing_raises_one_clear_sentence(model, tmp_path, route):
    if route == "onnx" and tensorrt_missing_reason("onnx") is None:
        pytest.skip("tensorrt Python package installed")
    with pytest.raises(TensorRTUnavailable, match="TensorRT") as info:
        export_tensorrt(model, tmp_path, route=route)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="precision"):
        export_tensorrt(model, tmp_path, route=route, precision="int8")


@needs_no_tensorrt
def test_cli_tensorrt_exits_nonzero_with_one_line(tmp_path, capsys):
    code = main(["export", "--model", str(tmp_path / "m.keras"), "--format", "tensorrt",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fusionnet export: error: TensorRT export") and "\n" not in err
    assert not (tmp_path / "out").exists()


# === CLI ===
@pytest.fixture(scope="module")
def keras_file(trained_run):
    """The session's trained run: ``best.keras`` beside the run's ``config.yaml``."""
    from pathlib import Path

    return Path(trained_run[0].output_dir) / "best.keras"


@pytest.mark.large
def test_cli_saved_model_adds_next_version(keras_file, model_base, capsys):
    before = sorted(p.name for p in (model_base / "fusionnet" / "1").rglob("*"))
    code = main(["export", "--model", str(keras_file), "--format", "saved_model",
                 "--output", str(model_base), "--tile-size", "32", "--overlap", "8"])
    assert code == 0
    version_dir = model_base / "fusionnet" / "2"
    assert capsys.readouterr().out.strip() == str(version_dir)
    assert sorted(p.name for p in (model_base / "fusionnet" / "1").rglob("*")) == before
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["version"] == 2 and card["source_model"] == str(keras_file)
    assert card["training_config"].endswith("config.yaml")
    assert len(card["training_config_sha256"]) == 64
    code = main(["export", "--model", str(keras_file), "--format", "saved_model",
                 "--output", str(model_base), "--version", "2", "--tile-size", "32",
                 "--overlap", "8"])
    assert code == 2 and "version 2 already exists" in capsys.readouterr().err


def test_cli_onnx_export(keras_file, tmp_path, capsys):
    code = main(["export", "--model", str(keras_file), "--format", "onnx",
                 "--output", str(tmp_path), "--name", "net"])
    assert code == 0 and (tmp_path / "net.onnx").is_file()
    assert (tmp_path / "net.model_card.json").is_file()
    x = np.random.default_rng(5).random((1, 32, 32, 1), dtype=np.float32)
    model = keras.saving.load_model(keras_file, compile=False)
    np.testing.assert_allclose(OnnxRunner(tmp_path / "net.onnx")(x),
                               model(x, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["--format", "onnx", "--quantize", "int8"], "--quantize int8 is not available"),
    (["--format", "litert", "--quantize", "int8"], "needs --calibration-data"),
    (["--format", "litert", "--version", "3"], "--version applies to"),
])
def test_cli_export_rejects_bad_options(keras_file, tmp_path, capsys, argv, message):
    code = main(["export", "--model", str(keras_file), "--output", str(tmp_path)] + argv)
    assert code == 2 and message in capsys.readouterr().err


def test_cli_export_missing_model(tmp_path, capsys):
    code = main(["export", "--model", str(tmp_path / "nope.keras"), "--format", "onnx",
                 "--output", str(tmp_path)])
    assert code == 2 and "--model not found" in capsys.readouterr().err
