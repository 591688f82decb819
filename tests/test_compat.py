"""The private Keras / TensorFlow internals in ``fusionnet_tf._compat`` still exist and behave.

Each test names the internal it pins; after a Keras or TensorFlow upgrade a
failure here says which workaround to revisit (see the comments in
``fusionnet_tf/_compat.py``), instead of training or inference quietly
changing.
"""

import configparser
import inspect
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fusionnet_tf import _compat

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _declared_range(package):
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    for line in parser["options"]["install_requires"].split("\n"):
        match = re.fullmatch(rf"{package}>=([\d.]+),<([\d.]+)", line.strip())
        if match:
            return _version(match[1]), _version(match[2])
    raise AssertionError(f"setup.cfg declares no '{package}>=X,<Y' range")


@pytest.mark.parametrize("package, module", [("tensorflow", tf), ("keras", keras)])
def test_installed_version_is_inside_the_declared_tested_range(package, module):
    low, high = _declared_range(package)
    assert (low, high) == _compat.TESTED_RANGES[package]
    assert low <= _version(module.__version__) < high, (
        f"{package} {module.__version__} is outside the tested range {low}..<{high} of setup.cfg: "
        "run tests/test_compat.py, fix fusionnet_tf/_compat.py, then widen the range")


# --------------------------------------------------------------------------- graph structure


def _conv_bn_model():
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same", name="conv")
    bn = keras.layers.BatchNormalization(name="bn")
    outputs = keras.layers.Activation("relu", name="relu")(bn(conv(inputs)))
    return keras.Model(inputs, outputs), conv, bn


def test_producer_and_node_counts_read_the_functional_graph():
    """``KerasTensor._keras_history``, ``Operation._inbound_nodes`` / ``_outbound_nodes``."""
    model, conv, bn = _conv_bn_model()
    assert _compat.producer(bn.input) is conv
    assert _compat.producer(model.outputs[0]).name == "relu"
    assert _compat.producer(np.zeros(3)) is None
    assert (_compat.call_count(conv), _compat.consumer_count(conv)) == (1, 1)
    conv(keras.Input((8, 8, 1)))  # a second call, read by nobody
    assert (_compat.call_count(conv), _compat.consumer_count(conv)) == (2, 1)


def test_run_through_graph_visits_every_layer_with_the_new_input_shape():
    """``Functional._run_through_graph(inputs, operation_fn, call_fn)``."""
    model, _, _ = _conv_bn_model()
    seen = []

    def record(layer, *args, **kwargs):
        seen.append((layer.name, tuple(args[0].shape)))
        return layer.compute_output_spec(*args, **kwargs)

    out = _compat.run_through_graph(model, keras.KerasTensor((3, 16, 16, 1)), record)
    assert seen == [("conv", (3, 16, 16, 1)), ("bn", (3, 16, 16, 2)), ("relu", (3, 16, 16, 2))]
    assert tuple(out.shape) == (3, 16, 16, 2)


# --------------------------------------------------------------------------- replace_call


def test_replace_call_runs_inside_the_stock_layer_and_saves_as_stock(tmp_path):
    """``Layer.__call__`` dispatches to the instance's ``call`` (training flag passed on)."""
    model, _, bn = _conv_bn_model()
    calls = []

    def spy(layer, inputs, training=None, mask=None):
        calls.append(training)
        return type(layer).call(layer, inputs, training=training, mask=mask)

    assert _compat.replace_call(bn, spy) is True
    assert _compat.replace_call(bn, spy) is False  # once per layer
    x = np.random.default_rng(0).random((2, 8, 8, 1), np.float32)
    model(x, training=True)
    model(x, training=False)
    assert calls == [True, False]
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(reloaded.get_layer("bn")) is keras.layers.BatchNormalization
    np.testing.assert_allclose(reloaded(x), model(x), atol=1e-6)


# --------------------------------------------------------------------------- multi-worker


def test_keras_trainer_internals_for_multiworker_fit_exist():
    """keras-team/keras#20585 workarounds: the names and signatures they wrap."""
    from keras.src.backend.tensorflow import trainer

    assert list(inspect.signature(trainer.reduce_per_replica).parameters) == [
        "values", "strategy", "reduction"]
    assert callable(trainer._collective_all_reduce_multi_worker)
    assert callable(trainer.tree.map_structure)
    # the step functions look reduce_per_replica up as a module global, so the patch applies
    source = inspect.getsource(trainer.TensorFlowTrainer)
    assert "reduce_per_replica(" in source
    assert "_maybe_symbolic_build(" in inspect.getsource(trainer.TensorFlowTrainer.fit)
    assert list(inspect.signature(trainer.TensorFlowTrainer._maybe_symbolic_build).parameters) == [
        "self", "iterator", "data_batch"]


def test_patched_reduce_is_idempotent_and_leaves_single_worker_reduction_alone():
    from keras.src.backend.tensorflow import trainer

    _compat.patch_multiworker_reduce()
    patched = trainer.reduce_per_replica
    _compat.patch_multiworker_reduce()
    assert trainer.reduce_per_replica is patched
    values = {"loss": tf.constant(1.5)}
    assert patched(values, tf.distribute.get_strategy(), "auto")["loss"].numpy() == 1.5


def test_symbolic_build_from_feeds_the_given_batch():
    model, _, _ = _conv_bn_model()
    model.compile(optimizer="adam", loss="mse")
    received = []
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: received.append(data_batch)
    batch = (np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8, 2), np.float32))
    _compat.symbolic_build_from(model, batch)
    model._maybe_symbolic_build(iterator=iter(()))
    assert received == [batch]


def test_symbolic_build_from_builds_a_compiled_model_under_a_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model, _, _ = _conv_bn_model()
        model.compile(optimizer="adam", loss="mse")
    _compat.symbolic_build_from(model, (np.zeros((1, 8, 8, 1), np.float32),
                                        np.zeros((1, 8, 8, 2), np.float32)))
    model._maybe_symbolic_build(iterator=None)
    assert model.optimizer.built


# --------------------------------------------------------------------------- inference_copy


class _Unclonable(keras.layers.Layer):
    """A layer whose config cannot rebuild it (so ``clone_model`` fails)."""

    def call(self, inputs):
        return inputs

    def get_config(self):
        return {**super().get_config(), "not_an_argument": 1}


def test_inference_copy_warns_with_the_reason_when_it_cannot_clone():
    from fusionnet_tf.inference.optimize import inference_copy

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inputs))
    model = keras.Model(inputs, _Unclonable(name="odd")(x))
    with pytest.warns(RuntimeWarning, match="not folded .* cannot be cloned .*not_an_argument"):
        copy = inference_copy(model)
    assert copy is model
    with pytest.raises(ValueError, match="could not clone"):
        inference_copy(model, precision="mixed_bfloat16")


def test_inference_copy_is_silent_when_it_folds():
    from fusionnet_tf.inference.optimize import inference_copy

    model, _, _ = _conv_bn_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy = inference_copy(model)
    assert "bn" not in [layer.name for layer in copy.layers]


def test_multi_worker_mode_from_the_public_cluster_resolver():
    """Public replacement for ``strategy.extended._in_multi_worker_mode()``."""
    import types

    from fusionnet_tf.training.strategy import in_multi_worker_mode, is_chief

    def strategy_with(cluster):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster))
        return types.SimpleNamespace(cluster_resolver=resolver)

    assert not in_multi_worker_mode(tf.distribute.get_strategy())
    assert not in_multi_worker_mode(strategy_with({"worker": ["localhost:1"]}))
    assert in_multi_worker_mode(strategy_with({"worker": ["localhost:1", "localhost:2"]}))
    assert in_multi_worker_mode(strategy_with({"chief": ["localhost:1"],
                                               "worker": ["localhost:2"]}))
    assert is_chief(tf.distribute.get_strategy())


# --------------------------------------------------------------------------- LiteRT op list


def _litert_interpreters():
    classes = [pytest.param(tf.lite.Interpreter, id="tf.lite")]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return classes
    return classes + [pytest.param(Interpreter, id="ai_edge_litert")]


@pytest.fixture(scope="module")
def pooling_tflite(tmp_path_factory):
    """A tiny ``.tflite`` flatbuffer: conv, 2x2 max pool, conv, 2x2 average pool."""
    from fusionnet_tf.export.litert import convert_tflite
    from fusionnet_tf.export.saved_model import export_plain_saved_model

    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(2, 3, padding="same")(x)
    x = keras.layers.AveragePooling2D(2)(x)
    saved = export_plain_saved_model(keras.Model(inputs, x),
                                     tmp_path_factory.mktemp("litert") / "model")
    return convert_tflite(saved, "none")


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
@pytest.mark.parametrize("interpreter_class", _litert_interpreters())
def test_litert_op_names_from_the_private_ops_details(interpreter_class, pooling_tflite):
    """``Interpreter._get_ops_details()`` exists and gives each op's ``op_name``."""
    assert callable(getattr(interpreter_class, "_get_ops_details", None)), (
        f"{interpreter_class.__module__}.Interpreter._get_ops_details is gone: "
        "revisit fusionnet_tf._compat.litert_op_names (LiteRT tile alignment)")
    names = _compat.litert_op_names(interpreter_class(model_content=pooling_tflite))
    assert names.count("CONV_2D") == 2
    assert names.count("MAX_POOL_2D") == 1 and names.count("AVERAGE_POOL_2D") == 1
