"""FusionNet and U-Net builders: shapes, graph structure, counts, saving."""

import numpy as np
import pytest
import tensorflow as tf
import keras
from keras import layers

from fusionnet_tf import build_fusionnet, build_unet
from fusionnet_tf.models import build_model, model_depth


@pytest.mark.parametrize("builder", [build_fusionnet, build_unet])
@pytest.mark.parametrize("hw", [(32, 32), (64, 32), (32, 96)])
def test_output_shape_equals_input_shape(builder, hw):
    model = builder(base_filters=4, depth=2)
    x = np.random.default_rng(0).random((2, *hw, 1), dtype=np.float32)
    y = model(x, training=False)
    assert tuple(y.shape) == (2, *hw, 1)
    assert y.dtype == "float32"
    assert np.all((y.numpy() >= 0) & (y.numpy() <= 1))


def test_fixed_input_shape_and_multichannel():
    model = build_fusionnet(input_shape=(48, 64, 3), num_classes=3,
                            output_activation="softmax", base_filters=4, depth=3)
    y = model(np.zeros((1, 48, 64, 3), np.float32)).numpy()
    assert y.shape == (1, 48, 64, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("builder", [build_fusionnet, build_unet])
def test_fixed_size_not_divisible_raises(builder):
    with pytest.raises(ValueError, match=r"input_shape.*W=36.*2\*\*depth=8"):
        builder(input_shape=(64, 36, 1), depth=3, base_filters=4)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"base_filters": 0}, "base_filters=0"),
    ({"base_filters": 4.5}, "base_filters=4.5"),
    ({"depth": 0}, "depth=0"),
    ({"residual_convs": 0}, "residual_convs=0"),
    ({"num_classes": 0}, "num_classes=0"),
    ({"output_activation": "relu"}, "output_activation='relu'"),
    ({"output_activation": "softmax"}, "num_classes=1"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"normalization": "instance"}, "normalization='instance'"),
    ({"input_shape": (64, 64)}, "input_shape"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, pattern):
    kwargs = {"base_filters": 4, "depth": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        build_fusionnet(**kwargs)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="architecture='resnet'"):
        build_model("resnet")


def test_long_skips_are_add_in_fusionnet_and_concat_in_unet():
    fusion = build_fusionnet(base_filters=4, depth=3)
    unet = build_unet(base_filters=4, depth=3)
    for level in (1, 2, 3):
        add = fusion.get_layer(f"dec{level}_skip_add")
        assert isinstance(add, layers.Add)
        # One input is the encoder feature of the same level, the other the upsampling.
        inbound = {t._keras_history.operation.name for t in add.input}
        assert inbound == {f"enc{level}_conv_out_relu", f"dec{level}_up_relu"}
        concat = unet.get_layer(f"dec{level}_skip_concat")
        assert isinstance(concat, layers.Concatenate)
    assert not any(isinstance(l, layers.Concatenate) for l in fusion.layers)
    assert not any(isinstance(l, layers.Add) for l in unet.layers)
    # Residual adds: one per conv-res-conv block (3 encoder + bridge + 3 decoder).
    res_adds = [l for l in fusion.layers if l.name.endswith("_res_add")]
    assert len(res_adds) == 7
    assert model_depth(fusion) == 3


def _conv(cin, cout, k=3, bias=False, bn=True):
    return k * k * cin * cout + (cout if bias else 0) + (4 * cout if bn else 0)


def _fusionnet_count(base, depth, residual_convs, bn, classes=1):
    """Parameter count derived by hand from the architecture description."""
    bias = not bn

    def crc(cin, f):
        return (_conv(cin, f, bias=bias, bn=bn)
                + residual_convs * _conv(f, f, bias=bias, bn=bn)
                + _conv(f, f, bias=bias, bn=bn))

    total, cin = 0, 1
    for level in range(depth):
        f = base * 2**level
        total += crc(cin, f)
        cin = f
    total += crc(cin, base * 2**depth)
    cin = base * 2**depth
    for level in reversed(range(depth)):
        f = base * 2**level
        total += _conv(cin, f, k=2, bias=bias, bn=bn)  # Conv2DTranspose 2x2
        total += crc(f, f)  # summation keeps f channels
        cin = f
    return total + base * classes + classes  # 1x1 output conv with bias


def test_parameter_counts_match_hand_derivation():
    # base 4, depth 2, batch norm (convs without bias, 4 BN weights per channel):
    # enc1 = (9*1*4 + 16) + 4 * (9*4*4 + 16) = 52 + 640 = 692, and so on.
    assert _fusionnet_count(4, 2, 3, bn=True) == build_fusionnet(
        base_filters=4, depth=2).count_params()
    assert _fusionnet_count(6, 3, 2, bn=False) == build_fusionnet(
        base_filters=6, depth=3, residual_convs=2, normalization="none").count_params()


def test_unet_parameter_count_by_hand():
    # base 4, depth 1, no normalization (convs have biases):
    # enc1: (9*1*4+4) + (9*4*4+4) = 40 + 148 = 188
    # bridge: (9*4*8+8) + (9*8*8+8) = 296 + 584 = 880
    # dec1 up: 2*2*8*4+4 = 132; convs on 8 channels: (9*8*4+4) + 148 = 292 + 148 = 440
    # output: 4*1+1 = 5
    expected = 188 + 880 + 132 + 440 + 5
    assert build_unet(base_filters=4, depth=1, normalization="none").count_params() == expected


def test_paper_width_parameter_count():
    # About 75 M parameters at base 64, depth 4 (README table).
    assert build_fusionnet().count_params() == _fusionnet_count(64, 4, 3, bn=True)


def test_keras_save_load_roundtrip_gives_identical_predictions(tmp_path):
    model = build_fusionnet(base_filters=4, depth=2, dropout=0.2)
    x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(2)  # non-trivial BN statistics (as training leaves them)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects needed
    np.testing.assert_array_equal(model.predict(x, verbose=0), reloaded.predict(x, verbose=0))
    assert [l.name for l in reloaded.layers] == [l.name for l in model.layers]


def test_gradients_reach_first_conv():
    model = build_fusionnet(base_filters=4, depth=2)
    x = tf.random.uniform((1, 32, 32, 1), seed=0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True))
    first = model.get_layer("enc1_conv_in")
    grad = tape.gradient(loss, first.kernel)
    assert grad is not None
    assert float(tf.reduce_sum(tf.abs(grad))) > 0


def test_mixed_bfloat16_computes_convs_in_bfloat16_output_float32():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = build_fusionnet(base_filters=4, depth=2)
    conv = model.get_layer("enc1_res_conv2")
    assert conv.compute_dtype == "bfloat16"
    assert conv.variable_dtype == "float32"
    assert conv.output.dtype == "bfloat16"
    y = model(np.zeros((1, 32, 32, 1), np.float32))
    assert y.dtype == "float32"
    assert model.get_layer("output").compute_dtype == "float32"


def test_layer_names_are_stable():
    names = {l.name for l in build_fusionnet(base_filters=4, depth=2).layers}
    for expected in ("image", "enc1_conv_in", "enc2_res_conv1", "enc2_res_add",
                     "enc2_pool", "bridge_conv_out", "dec2_up", "dec2_skip_add",
                     "dec1_conv_out_relu", "output_conv", "output"):
        assert expected in names
