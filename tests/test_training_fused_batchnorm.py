"""Fused BatchNormalization: same maths as Keras's layer, same saved model."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from fusionnet_tf.models import build_fusionnet
from fusionnet_tf.training.fused_batchnorm import use_fused_batchnorm


def twin_models(build):
    """``(keras_model, fused_model)``: two copies with the same weights."""
    keras.utils.set_random_seed(0)
    plain = build()
    fused = keras.models.clone_model(plain)
    fused.set_weights(plain.get_weights())
    return plain, fused


def single_bn(shape, **kwargs):
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9, **kwargs)(inputs))


@pytest.mark.parametrize("center, scale", [(True, True), (False, False)])
def test_one_layer_matches_keras_forward_gradients_and_moving_statistics(center, scale):
    plain, fused = twin_models(lambda: single_bn((6, 5, 3), center=center, scale=scale))
    assert use_fused_batchnorm(fused) == 1
    x = tf.random.stateless_normal((4, 6, 5, 3), seed=[1, 2]) * 3.0 + 1.0
    upstream = tf.random.stateless_normal((4, 6, 5, 3), seed=[3, 4])
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=True) * upstream)
        grads = tape.gradient(loss, [x] + model.trainable_weights)
        results.append((model(x, training=True), grads))
    (y_plain, g_plain), (y_fused, g_fused) = results
    np.testing.assert_allclose(y_fused.numpy(), y_plain.numpy(), atol=1e-5)
    # hand check: training output is standardized per channel (biased variance)
    if not center and not scale:
        xs = x.numpy()
        expected = (xs - xs.mean((0, 1, 2))) / np.sqrt(xs.var((0, 1, 2)) + 1e-3)
        np.testing.assert_allclose(y_fused.numpy(), expected, atol=1e-4)
    for a, b in zip(g_plain, g_fused):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    # two training calls each: moving statistics updated identically (biased variance)
    for a, b in zip(plain.non_trainable_weights, fused.non_trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6)
    bn = fused.layers[-1]
    xs = x.numpy()
    mean, var = xs.mean((0, 1, 2)), xs.var((0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean * (1 - 0.9**2), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9**2 + var * (1 - 0.9**2), rtol=1e-4)
    # inference runs Keras's own code on the (equal) moving statistics
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(),
                               atol=1e-6)


def test_network_forward_and_training_steps_match_keras():
    plain, fused = twin_models(lambda: build_fusionnet(base_filters=4, depth=2,
                                                       input_shape=(32, 32, 1)))
    switched = use_fused_batchnorm(fused)
    assert switched == sum(isinstance(l, keras.layers.BatchNormalization) for l in fused.layers) > 0
    assert use_fused_batchnorm(fused) == switched  # idempotent
    x = tf.random.stateless_uniform((2, 32, 32, 1), seed=[5, 6])
    np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(),
                               atol=1e-5)
    y = tf.cast(tf.random.stateless_uniform((2, 32, 32, 1), seed=[7, 8]) < 0.3, tf.float32)
    losses = []
    for model in (plain, fused):
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy")
        losses.append([float(model.train_on_batch(x, y)) for _ in range(5)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-3)
    assert losses[1][-1] < losses[1][0]


def test_nested_models_are_switched():
    inner = keras.Sequential([keras.layers.Conv2D(3, 3, padding="same"),
                              keras.layers.BatchNormalization()])
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.BatchNormalization()(inner(inputs))
    model = keras.Model(inputs, outputs)
    assert use_fused_batchnorm(model) == 2
    x = tf.random.stateless_uniform((2, 8, 8, 1), seed=[2, 3])
    assert model(x, training=True).shape == (2, 8, 8, 3)


def test_saved_model_keeps_the_plain_keras_layer(tmp_path):
    _, fused = twin_models(lambda: build_fusionnet(base_filters=4, depth=2,
                                                   input_shape=(32, 32, 1)))
    use_fused_batchnorm(fused)
    path = tmp_path / "m.keras"
    fused.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    modules = {layer["module"] for layer in config["config"]["layers"]}
    assert "BatchNormalization" in classes and modules == {"keras.layers"}
    loaded = keras.saving.load_model(path)
    x = tf.random.stateless_uniform((1, 32, 32, 1), seed=[9, 9])
    np.testing.assert_allclose(loaded(x).numpy(), fused(x).numpy(), atol=1e-5)


HALF_POLICIES = [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]


def half_precision_policy(policy):
    keras.mixed_precision.set_dtype_policy(policy)  # conftest resets it to float32


def run_twins(plain, fused, x, upstream):
    """Output, gradients (w.r.t. x and the trainable weights) of one training call of each model."""
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        results.append((y, tape.gradient(loss, [x] + model.trainable_weights)))
    return results


def as_float(tensor):
    return np.asarray(tf.cast(tensor, tf.float32))


@pytest.mark.parametrize("policy, dtype", HALF_POLICIES)
@pytest.mark.parametrize("center, scale", [(True, True), (False, False)])
def test_half_precision_matches_keras_outputs_gradients_and_moving_statistics(
        policy, dtype, center, scale):
    half_precision_policy(policy)
    plain, fused = twin_models(lambda: single_bn((6, 5, 3), center=center, scale=scale))
    assert use_fused_batchnorm(fused) == 1
    x = tf.random.stateless_normal((4, 6, 5, 3), seed=[1, 2]) * 3.0 + 1.0
    upstream = tf.random.stateless_normal((4, 6, 5, 3), seed=[3, 4])
    (y_plain, g_plain), (y_fused, g_fused) = run_twins(plain, fused, x, upstream)
    # output in the layer's compute dtype, equal within half-precision rounding
    assert y_fused.dtype == y_plain.dtype == dtype
    np.testing.assert_allclose(as_float(y_fused), as_float(y_plain), atol=2e-2)
    # gradients w.r.t. x, gamma and beta: float32 like Keras's, within bf16 tolerance
    assert len(g_fused) == len(g_plain) == 1 + 2 * center
    for a, b in zip(g_plain, g_fused):
        assert b.dtype == a.dtype == tf.float32
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-2,
                                   atol=2e-2 * np.abs(a.numpy()).max())
    # moving statistics: float32, Keras's biased variance of the half-precision inputs
    bn = fused.layers[-1]
    assert bn.moving_mean.dtype == bn.moving_variance.dtype == "float32"
    for a, b in zip(plain.non_trainable_weights, fused.non_trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    xs = as_float(tf.cast(x, dtype))
    mean, var = xs.mean((0, 1, 2)), xs.var((0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean * 0.1, rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + var * 0.1, rtol=1e-4)
    # inference: Keras's own code on equal statistics
    np.testing.assert_array_equal(as_float(fused(x, training=False)),
                                  as_float(plain(x, training=False)))


def test_dynamic_shapes_keep_the_biased_moving_variance():
    half_precision_policy("mixed_bfloat16")
    bn = keras.layers.BatchNormalization(momentum=0.5)
    bn.build((None, None, None, 2))
    use_fused_batchnorm(keras.Sequential([keras.Input((None, None, 2)), bn]))
    call = tf.function(lambda t: bn(t, training=True),
                       input_signature=[tf.TensorSpec((None, None, None, 2), tf.bfloat16)])
    x = tf.cast(tf.random.stateless_normal((3, 4, 5, 2), seed=[4, 2]) * 2.0, tf.bfloat16)
    assert call(x).dtype == tf.bfloat16
    var = as_float(x).var((0, 1, 2))
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-4)


def batchnorm_ops(graph):
    """``{op type: [op, ...]}`` for the fused BN ops of a traced graph."""
    found = {"FusedBatchNormV3": [], "FusedBatchNormGradV3": []}
    for op in graph.get_operations():
        if op.type in found:
            found[op.type].append(op)
    return found


def test_mixed_bfloat16_training_step_runs_fused_kernels_without_casts():
    half_precision_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=1, residual_convs=1, input_shape=(16, 16, 1))
    switched = use_fused_batchnorm(model)

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_weights)

    graph = gradients.get_concrete_function(tf.TensorSpec((2, 16, 16, 1), tf.float32)).graph
    found = batchnorm_ops(graph)
    assert len(found["FusedBatchNormV3"]) == len(found["FusedBatchNormGradV3"]) == switched > 0
    for op in found["FusedBatchNormV3"]:
        x, scale, offset = op.inputs[:3]
        assert (x.dtype, scale.dtype, offset.dtype) == (tf.bfloat16, tf.float32, tf.float32)
        assert x.op.type != "Cast"
        assert [out.dtype for out in op.outputs[:3]] == [tf.bfloat16, tf.float32, tf.float32]
        assert {consumer.type for consumer in op.outputs[0].consumers()} == {"Relu"}
    for op in found["FusedBatchNormGradV3"]:
        assert op.inputs[0].dtype == tf.bfloat16 and op.inputs[0].op.type != "Cast"
        assert "Cast" not in {consumer.type for consumer in op.outputs[0].consumers()}


def test_mixed_bfloat16_network_trains_like_keras():
    half_precision_policy("mixed_bfloat16")
    plain, fused = twin_models(lambda: build_fusionnet(base_filters=4, depth=2,
                                                       input_shape=(32, 32, 1)))
    use_fused_batchnorm(fused)
    x = tf.random.stateless_uniform((2, 32, 32, 1), seed=[5, 6])
    y = tf.cast(tf.random.stateless_uniform((2, 32, 32, 1), seed=[7, 8]) < 0.3, tf.float32)
    losses = []
    for model in (plain, fused):
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy")
        losses.append([float(model.train_on_batch(x, y)) for _ in range(5)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-2)
    assert losses[1][-1] < losses[1][0]
    for a, b in zip(plain.non_trainable_weights, fused.non_trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=5e-2, atol=5e-3)


def test_other_dtypes_fall_back_to_keras():
    keras.utils.set_random_seed(0)
    plain, fused = (keras.layers.BatchNormalization(dtype="float64") for _ in range(2))
    model = keras.Sequential([keras.Input((4, 4, 2), dtype="float64"), fused])
    use_fused_batchnorm(model)
    x = tf.random.stateless_normal((2, 4, 4, 2), seed=[1, 1], dtype=tf.float64) * 3.0
    y_fused, y_plain = fused(x, training=True), plain(x, training=True)
    assert y_fused.dtype == tf.float64
    np.testing.assert_array_equal(y_fused.numpy(), y_plain.numpy())
    np.testing.assert_array_equal(fused.moving_variance.numpy(), plain.moving_variance.numpy())
