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


def test_bfloat16_inputs_fall_back_to_keras():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        plain, fused = twin_models(lambda: build_fusionnet(base_filters=4, depth=1,
                                                           input_shape=(16, 16, 1)))
        use_fused_batchnorm(fused)
        x = tf.random.stateless_uniform((2, 16, 16, 1), seed=[1, 1])
        np.testing.assert_array_equal(fused(x, training=True).numpy(),
                                      plain(x, training=True).numpy())
    finally:
        keras.mixed_precision.set_global_policy("float32")
