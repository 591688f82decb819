"""``conv_flops`` on a 3D model: Conv3D and Conv3DTranspose counted by hand."""

import keras

from fusionnet_tf.inference.optimize import conv_flops


def test_conv_flops_3d_hand_computed():
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, (1, 3, 3), padding="same")(inputs)       # 1->4 at 4x8x8
    x = keras.layers.MaxPooling3D((1, 2, 2))(x)
    x = keras.layers.Conv3D(6, 3, padding="same")(x)                      # 4->6 at 4x4x4
    x = keras.layers.Conv3DTranspose(4, (1, 2, 2), strides=(1, 2, 2))(x)  # 6->4 from 4x4x4
    outputs = keras.layers.Conv3D(2, 1)(x)                                # 4->2 at 4x8x8
    model = keras.Model(inputs, outputs)
    expected = (2 * 9 * 1 * 4 * 256 + 2 * 27 * 4 * 6 * 64 + 2 * 4 * 6 * 4 * 64
                + 2 * 1 * 4 * 2 * 256)
    assert expected == 18432 + 82944 + 12288 + 4096
    assert conv_flops(model, 8, 8, depth=4) == expected
    assert conv_flops(model, 8, 8, depth=8, batch=2) == 4 * expected


def test_conv_flops_by_layer_names_each_conv():
    from fusionnet_tf.inference.optimize import conv_flops_by_layer

    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, (1, 3, 3), padding="same", name="a")(inputs)
    x = keras.layers.MaxPooling3D((1, 2, 2))(x)
    x = keras.layers.Conv3D(6, 3, padding="same", name="b")(x)
    x = keras.layers.Conv3DTranspose(4, (1, 2, 2), strides=(1, 2, 2), name="c")(x)
    outputs = keras.layers.Conv3D(2, 1, name="d")(x)
    model = keras.Model(inputs, outputs)
    by_layer = conv_flops_by_layer(model, 8, 8, depth=4)
    assert by_layer == {"a": 18432, "b": 82944, "c": 12288, "d": 4096}
    assert list(by_layer) == ["a", "b", "c", "d"]  # call order
    assert sum(by_layer.values()) == conv_flops(model, 8, 8, depth=4)
