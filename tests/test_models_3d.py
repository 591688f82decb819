"""The anisotropic 3D FusionNet: layer counts and shapes, reload, mixed precision, training."""

import keras
import numpy as np
import pytest
from keras import layers

from fusionnet_tf.models import build_fusionnet3d, build_model, model_depth
from fusionnet_tf.models.fusionnet3d import input_multiple_3d

DEPTH, ANISO, RES = 3, 2, 1


@pytest.fixture(scope="module")
def tiny():
    return build_fusionnet3d(base_filters=2, depth=DEPTH, residual_convs=RES,
                             anisotropic_levels=ANISO, out_channels=5)


def of_type(model, kind):
    return [layer for layer in model.layers if type(layer) is kind]


def test_documented_layer_counts_and_geometry(tiny):
    convs = of_type(tiny, layers.Conv3D)
    assert len(convs) == (2 * DEPTH + 1) * (RES + 2) + 1
    pools = of_type(tiny, layers.MaxPooling3D)
    ups = of_type(tiny, layers.Conv3DTranspose)
    assert len(pools) == len(ups) == DEPTH == model_depth(tiny)
    assert [p.pool_size for p in pools] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert {tuple(u.strides) for u in ups} == {(1, 2, 2), (2, 2, 2)}
    assert tiny.get_layer("dec3_up").strides == (2, 2, 2)
    assert tiny.get_layer("dec1_up").strides == (1, 2, 2)
    assert tiny.get_layer("enc1_conv_in").kernel_size == (1, 3, 3)
    assert tiny.get_layer("enc2_res_conv1").kernel_size == (1, 3, 3)
    assert tiny.get_layer("enc3_conv_out").kernel_size == (3, 3, 3)
    assert tiny.get_layer("bridge_conv_in").kernel_size == (3, 3, 3)
    assert tiny.get_layer("dec1_conv_out").kernel_size == (1, 3, 3)
    assert len(of_type(tiny, layers.Add)) == (2 * DEPTH + 1) + DEPTH  # residual + long skips
    assert tiny.get_layer("bridge_conv_in").filters == 2 * 2**DEPTH
    assert input_multiple_3d(DEPTH, ANISO) == (2, 8, 8)


def test_output_shape_channels_and_sigmoid(tiny):
    x = np.random.default_rng(0).random((2, 4, 16, 24, 1)).astype("float32")
    y = tiny.predict(x, verbose=0)
    assert y.shape == (2, 4, 16, 24, 5) and y.dtype == np.float32
    assert 0 <= y.min() and y.max() <= 1


def test_reloads_without_custom_objects(tiny, tmp_path):
    path = tmp_path / "m.keras"
    tiny.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(1).random((1, 2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), tiny.predict(x, verbose=0),
                               atol=1e-6)


def test_float32_output_under_mixed_bfloat16():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = build_fusionnet3d(base_filters=2, depth=1, residual_convs=1, anisotropic_levels=1)
    assert model.get_layer("enc1_conv_in").compute_dtype == "bfloat16"
    assert model(np.zeros((1, 1, 4, 4, 1), "float32")).dtype == "float32"


@pytest.mark.parametrize("kwargs, match", [
    ({"anisotropic_levels": 4, "depth": 3}, "anisotropic_levels"),
    ({"input_shape": (3, 16, 16, 1)}, "multiple of 2"),
    ({"input_shape": (4, 12, 16, 1)}, "multiple of 8"),
    ({"input_shape": (16, 16, 1)}, "input_shape"),
    ({"out_channels": 0}, "num_classes|out_channels"),
])
def test_bad_arguments_are_refused(kwargs, match):
    base = {"base_filters": 2, "depth": 3, "anisotropic_levels": 2}
    with pytest.raises(ValueError, match=match):
        build_fusionnet3d(**{**base, **kwargs})


def test_build_model_registry_and_2d_blocks_unchanged():
    model = build_model("fusionnet3d", base_filters=2, depth=1, residual_convs=1,
                        anisotropic_levels=0, out_channels=3, fc_filters=None)
    assert model.get_layer("enc1_pool").pool_size == (2, 2, 2)
    flat = build_model("fusionnet", base_filters=2, depth=1, residual_convs=1)
    assert flat.get_layer("enc1_conv_in").kernel_size == (3, 3)
    assert type(flat.get_layer("dec1_up")) is layers.Conv2DTranspose


def test_a_tiny_model_trains_until_its_loss_falls():
    from fusionnet_tf.training.losses import MaskedAffinityLoss

    keras.utils.set_random_seed(0)
    model = build_fusionnet3d(base_filters=2, depth=1, residual_convs=1, anisotropic_levels=1,
                              out_channels=2)
    rng = np.random.default_rng(0)
    x = rng.random((4, 2, 16, 16, 1)).astype("float32")
    target = (x > 0.5).astype("float32")
    y = np.concatenate([np.repeat(target, 2, -1), np.ones_like(np.repeat(target, 2, -1))], -1)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=MaskedAffinityLoss())
    history = model.fit(x, y, epochs=15, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0]


def test_count_parameters_and_info_table():
    from fusionnet_tf.cli import info
    from fusionnet_tf.models import count_parameters

    knobs = {"depth": 2, "anisotropic_levels": 1, "out_channels": 10}
    for base in (1, 3):  # off the sampled bases 4, 8, 12
        expected = build_model("fusionnet3d", base_filters=base, **knobs).count_params()
        assert count_parameters("fusionnet3d", base_filters=base, **knobs) == expected
    rows = [row for row in info.parameter_table(bases=(2,), depth=2) if row[0] == "fusionnet3d"]
    assert rows == [("fusionnet3d", 2, 2, build_model("fusionnet3d", base_filters=2, depth=2,
                                                     **info.TABLE_KNOBS["fusionnet3d"]).count_params())]
