"""Model loading: one adapter per runtime behind ``fusionnet_tf.inference.backends.load_model``.

Dispatch, shipped-model names and options are checked on tiny models and
stand-in files; the ONNX and LiteRT runners themselves are checked against
Keras in ``test_export.py`` (and through ``fusionnet predict`` in
``test_export_bioimageio.py``).
"""

import importlib
import inspect
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from affinity_models import pointwise_model
from fusionnet_tf import pretrained
from fusionnet_tf.inference import Predictor, backends
from fusionnet_tf.inference.backends import (MODEL_SUFFIXES, RUNTIMES, load_model,
                                             resolve_model_path, runtime_of)


def tiny_model(seed=0):
    """Two 3x3 convolutions, (B, H, W, 1) -> (B, H, W, 1) sigmoid."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A registry of two tiny 'shipped' models in tmp_path: 2D ``tiny``, 3D ``tiny3d``."""
    model, model3d = tiny_model(), pointwise_model(channels=3)
    model.save(tmp_path / "tiny.keras")
    model3d.save(tmp_path / "tiny3d.keras")
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    (tmp_path / "tiny3d.offsets.json").write_text(json.dumps({"offsets": offsets}))
    registry = {
        "tiny": pretrained.PretrainedModel("tiny", "tiny.keras", None, "test",
                                           directory=tmp_path),
        "tiny3d": pretrained.PretrainedModel("tiny3d", "tiny3d.keras", None, "test",
                                             kind="affinities", directory=tmp_path),
    }
    monkeypatch.setattr(pretrained, "REGISTRY", registry)
    return {"tiny": model, "tiny3d": model3d, "offsets": offsets}


# === Which adapter loads what ===

def test_runtime_of_each_kind_of_file(tmp_path):
    expected = {"a.keras": "keras", "b.H5": "keras", "c.zip": "bioimageio", "d.onnx": "onnx",
                "e.tflite": "litert"}
    for name in expected:
        (tmp_path / name).write_bytes(b"")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    found = {name: runtime_of(tmp_path / name) for name in expected}
    assert found == expected and runtime_of(saved) == "saved_model"
    assert sorted(MODEL_SUFFIXES) == [".h5", ".keras", ".onnx", ".tflite", ".zip"]


def test_runtime_of_refuses_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found: .*missing.onnx"):
        runtime_of(tmp_path / "missing.onnx")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError,
                       match=r"\.keras, \.h5, \.zip, \.onnx, \.tflite file .*weights.pt"):
        runtime_of(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="no saved_model.pb"):
        runtime_of(tmp_path)


def test_every_runtime_has_a_loader_taking_its_options():
    for runtime, (module_name, options) in RUNTIMES.items():
        module = importlib.import_module(f"{backends.__name__}.{module_name}")
        parameters = list(inspect.signature(module.load).parameters)
        assert parameters == ["path", *options], runtime


def test_load_model_refuses_an_option_of_another_runtime(tmp_path):
    tiny_model().save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"option 'num_threads' does not apply to the keras "
                                         r"model .*m.keras \(it takes no options\)"):
        load_model(tmp_path / "m.keras", num_threads=2)
    (tmp_path / "m.onnx").write_bytes(b"")  # refused before anything reads it
    with pytest.raises(ValueError, match=r"'num_threads' .* onnx .*\(it takes providers\)"):
        load_model(tmp_path / "m.onnx", num_threads=2)


def test_keras_adapter_names_a_broken_file(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras is not a valid model file: a .keras"):
        load_model(tmp_path / "broken.keras")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="broken.h5 is not a valid model file: a .h5"):
        load_model(tmp_path / "broken.h5")


# === Shipped models by name ===

def test_load_model_by_shipped_name(shipped, tmp_path):
    x = np.random.default_rng(0).random((1, 12, 10, 1), dtype=np.float32)
    by_name = load_model("tiny")
    assert isinstance(by_name, keras.Model)
    np.testing.assert_array_equal(by_name(x).numpy(), shipped["tiny"](x).numpy())
    assert resolve_model_path("tiny") == tmp_path / "tiny.keras"
    path = tmp_path / "tiny.keras"
    assert resolve_model_path(str(path)) == path  # a str with a folder is a path


def test_a_path_object_is_never_a_name(shipped):
    from pathlib import Path

    with pytest.raises(FileNotFoundError, match="model not found: tiny"):
        load_model(Path("tiny"))


def test_unknown_name_lists_the_known_ones(shipped):
    with pytest.raises(ValueError, match=r"unknown pretrained model 'nosuch'.*tiny, tiny3d"):
        load_model("nosuch")


def test_predictor_of_a_3d_name_reads_the_offsets_beside_its_weights(shipped):
    predictor = Predictor("tiny3d", tile_shape=(2, 8, 8), overlap=(0, 2, 2), tta=2,
                          engine="plain")
    assert predictor.offsets == tuple(tuple(o) for o in shipped["offsets"])
    volume = np.random.default_rng(1).random((3, 10, 9), dtype=np.float32)
    plain = Predictor(shipped["tiny3d"], tile_shape=(2, 8, 8), overlap=(0, 2, 2), tta=1,
                      engine="plain").predict(volume)
    expected = np.moveaxis(shipped["tiny3d"](volume[None, ..., None]).numpy()[0], -1, 0)
    np.testing.assert_allclose(plain, expected, atol=1e-6)  # pointwise: tiling changes nothing


# === Imports ===

@pytest.mark.e2e
def test_loading_a_keras_file_imports_no_other_runtime(tmp_path):
    tiny_model().save(tmp_path / "m.keras")
    code = ("import sys; from fusionnet_tf.inference import load_model; "
            f"load_model({str(tmp_path / 'm.keras')!r}); "
            "print([m for m in ('onnxruntime', 'onnx', 'ai_edge_litert', 'bioimageio', "
            "'fusionnet_tf.export', 'fusionnet_tf.inference.backends.onnx_runner', "
            "'fusionnet_tf.inference.backends.litert_runner') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_public_names_stay_importable():
    import fusionnet_tf
    import fusionnet_tf.export as export
    import fusionnet_tf.inference.predictor as predictor
    from fusionnet_tf.export import bioimageio
    from fusionnet_tf.inference.backends import bioimageio_zip, litert_runner, onnx_runner

    assert fusionnet_tf.load_model is load_model and predictor.load_model is load_model
    assert fusionnet_tf.inference.load_model is load_model
    assert export.OnnxRunner is onnx_runner.OnnxRunner
    assert export.LiteRTRunner is litert_runner.LiteRTRunner
    assert export.load_package_model is bioimageio_zip.load_package_model
    assert bioimageio.load_package_model is bioimageio_zip.load_package_model
