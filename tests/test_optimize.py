"""inference_function: the inference graph with the weights baked in as constants."""

import keras
import numpy as np
import pytest

from fusionnet_tf.inference import optimize
from fusionnet_tf.inference.optimize import inference_copy, inference_function
from fusionnet_tf.models import build_fusionnet

TILE = 32


def trained_like(base_filters=4, seed=0):
    """A tiny FusionNet whose BatchNorm statistics are not the initial ones (non-zero biases)."""
    keras.utils.set_random_seed(seed)
    model = build_fusionnet(base_filters=base_filters, depth=2)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
    return model


def images(batch=2, seed=1):
    return np.random.default_rng(seed).random((batch, TILE, TILE, 1)).astype(np.float32)


def conv_filter_inputs(function):
    """Op type feeding the filter input of every Conv2D / Conv2DBackpropInput of the traced graph."""
    graph = function.get_concrete_function().graph
    kinds = []
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kinds.append(op.inputs[1].op.type)
        elif op.type == "Conv2DBackpropInput":
            kinds.append(op.inputs[1].op.type)
    return kinds


@pytest.mark.parametrize("constant_weights", [None, True, False])
def test_inference_function_equals_keras_model(constant_weights):
    model = trained_like()
    x = images()
    expected = model(x, training=False).numpy()
    run = inference_function(inference_copy(model), TILE, constant_weights=constant_weights)
    result = run(x).numpy()
    assert result.dtype == np.float32 and result.shape == expected.shape
    np.testing.assert_allclose(result, expected, atol=1e-5)
    # one trace serves every batch size
    np.testing.assert_allclose(run(x[:1]).numpy(), expected[:1], atol=1e-5)


def test_constant_weights_reach_the_convolutions_as_constants():
    copy = inference_copy(trained_like())
    kinds = conv_filter_inputs(inference_function(copy, TILE))
    assert kinds and set(kinds) == {"Const"}  # oneDNN caches blocked kernels only for these
    variable_kinds = conv_filter_inputs(inference_function(copy, TILE, constant_weights=False))
    assert "Const" not in variable_kinds


def test_large_models_and_xla_keep_variables(monkeypatch):
    copy = inference_copy(trained_like())
    assert "Const" not in conv_filter_inputs(inference_function(copy, TILE, jit_compile=True))
    monkeypatch.setattr(optimize, "MAX_CONSTANT_BYTES", 1000)
    run = inference_function(copy, TILE)
    assert "Const" not in conv_filter_inputs(run)
    np.testing.assert_allclose(run(images()).numpy(), copy(images(), training=False).numpy(),
                               atol=1e-5)


def test_constants_are_a_snapshot():
    copy = inference_copy(trained_like())
    x = images()
    run = inference_function(copy, TILE)
    before = run(x).numpy()
    copy.get_layer("output_conv").set_weights(
        [w + 1.0 for w in copy.get_layer("output_conv").get_weights()])
    np.testing.assert_array_equal(run(x).numpy(), before)


def test_mixed_bfloat16_copy_returns_float32_close_to_float32():
    model = trained_like()
    x = images()
    expected = model(x, training=False).numpy()
    run = inference_function(inference_copy(model, precision="mixed_bfloat16"), TILE)
    result = run(x).numpy()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=0.05)
    assert np.abs(result - expected).max() > 0  # it did compute in bfloat16


def test_any_spatial_size_without_tile():
    model = trained_like()
    run = inference_function(inference_copy(model), None)
    x = np.random.default_rng(2).random((1, 48, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(run(x).numpy(), model(x, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "bfloat16"])
def test_half_precision_outputs_are_cast_to_float32(dtype):
    """bfloat16 compute (mixed policy) and bfloat16 weights alike give float32 outputs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(2, 3, padding="same", dtype=dtype)(inputs)
    model = keras.Model(inputs, outputs)
    x = images()
    result = inference_function(model, TILE)(x).numpy()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, model(x).numpy().astype(np.float32), atol=1e-6)
