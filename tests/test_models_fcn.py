"""FCN-32s/16s/8s: bilinear upsampling, zero start, fusions, shapes, saving, wiring, VGG16 init."""

import numpy as np
import pytest
import tifffile
import yaml
import keras
from keras import layers

from fusionnet_tf import build_fcn
from fusionnet_tf.models import build_model, input_multiple, model_depth
from fusionnet_tf.models.fcn import bilinear_kernel, load_vgg16_weights

VARIANTS = ("32s", "16s", "8s")
# upsampling layer of each factor, and a variant that has it
UPSCORE = {2: ("upscore2", "8s"), 8: ("upscore8", "8s"), 16: ("upscore16", "16s"),
           32: ("upscore32", "32s")}


def small(variant="8s", **kwargs):
    return build_fcn(variant=variant, base_filters=4, fc_filters=16, **kwargs)


def hand_bilinear(factor):
    """Weight of a source pixel for output pixels 0..2f-1 of its transposed-conv window.

    Output pixel i of the window lies at (i + 0.5) / f source pixels from the
    window start; the source pixel's centre is at 1 (one pixel in), and
    bilinear interpolation weighs it by 1 - distance.
    """
    weights = [max(0.0, 1.0 - abs((i + 0.5) / factor - 1.0)) for i in range(2 * factor)]
    return np.outer(weights, weights)


# ---------------------------------------------------------------- upsampling


def test_bilinear_factor_2_by_hand():
    tent = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(bilinear_kernel(2)[:, :, 0, 0], np.outer(tent, tent))


@pytest.mark.parametrize("factor", sorted(UPSCORE))
def test_transposed_conv_kernels_are_bilinear_at_init(factor):
    name, variant = UPSCORE[factor]
    layer = small(variant).get_layer(name)
    assert isinstance(layer, layers.Conv2DTranspose) and layer.trainable
    assert layer.strides == (factor, factor) and not layer.use_bias
    kernel = layer.kernel.numpy()
    assert kernel.shape == (2 * factor, 2 * factor, 1, 1)
    np.testing.assert_allclose(kernel[:, :, 0, 0], hand_bilinear(factor), atol=1e-7)


def test_multiclass_kernel_maps_each_class_to_itself():
    kernel = bilinear_kernel(4, channels=3)
    np.testing.assert_array_equal(kernel[:, :, 0, 1], 0)
    np.testing.assert_array_equal(kernel[:, :, 2, 2], kernel[:, :, 0, 0])


@pytest.mark.parametrize("factor", sorted(UPSCORE))
def test_upsampling_reproduces_a_ramp_at_pixel_centres(factor):
    """Bilinear upsampling is exact on a linear ramp; checks alignment (no half-pixel shift)."""
    name, variant = UPSCORE[factor]
    layer = small(variant).get_layer(name)
    ramp = np.tile(np.arange(6, dtype=np.float32), (6, 1))[None, :, :, None]  # value = column
    out = layer(ramp).numpy()[0, :, :, 0]
    assert out.shape == (6 * factor, 6 * factor)
    inner = slice(factor // 2, 6 * factor - factor // 2)  # away from the zero padding
    columns = np.arange(6 * factor)[inner]
    expected = (columns + 0.5) / factor - 0.5  # source coordinate of each output pixel
    np.testing.assert_allclose(out[inner, inner], np.tile(expected, (len(columns), 1)),
                               atol=1e-5)


# ---------------------------------------------------------------- graph


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_network_outputs_exactly_one_half(variant):
    model = small(variant)
    x = np.random.default_rng(0).random((2, 64, 96, 1), dtype=np.float32)
    assert np.all(model(x, training=False).numpy() == 0.5)
    scores = [layer for layer in model.layers if layer.name.startswith("score")]
    assert len(scores) == {"32s": 1, "16s": 2, "8s": 3}[variant]
    for layer in scores:
        assert not np.any(layer.kernel.numpy()) and not np.any(layer.bias.numpy())


@pytest.mark.parametrize("variant, fusions", [
    ("32s", {}),
    ("16s", {"fuse_pool4": {"upscore2", "score_pool4"}}),
    ("8s", {"fuse_pool4": {"upscore2", "score_pool4"},
            "fuse_pool3": {"upscore_pool4", "score_pool3"}}),
])
def test_skip_fusions_of_each_variant(variant, fusions):
    model = small(variant)
    adds = [layer for layer in model.layers if isinstance(layer, layers.Add)]
    assert {layer.name for layer in adds} == set(fusions)
    for layer in adds:
        sources = {t._keras_history.operation.name for t in layer.input}
        assert sources == fusions[layer.name]
    assert not any(isinstance(layer, layers.Concatenate) for layer in model.layers)
    assert model_depth(model) == 5 and input_multiple(model) == 32


def test_vgg16_layout_and_stable_names():
    model = build_fcn(base_filters=4, fc_filters=16)
    convs = [layer for layer in model.layers
             if isinstance(layer, layers.Conv2D) and layer.name.startswith("block")]
    assert [layer.name for layer in convs] == [
        f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
        for c in range(1, n + 1)]
    assert [layer.filters for layer in convs] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    assert model.get_layer("fc6").kernel_size == (7, 7) and model.get_layer("fc6").filters == 16
    assert model.get_layer("fc7").kernel_size == (1, 1)
    assert model.get_layer("fc6_dropout").rate == 0.5
    assert model.name == "fcn8s"
    assert build_fcn(base_filters=2).get_layer("fc6").filters == 128  # default 64 x base


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hw", [(64, 96), (96, 32), (32, 64)])
def test_output_shape_equals_input_shape(variant, hw):
    y = small(variant)(np.zeros((1, *hw, 1), np.float32))
    assert tuple(y.shape) == (1, *hw, 1) and y.dtype == "float32"


def test_mixed_bfloat16_policy_keeps_a_float32_output():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = small()
    assert model.get_layer("block3_conv2").compute_dtype == "bfloat16"
    assert model.get_layer("upscore8").variable_dtype == "float32"
    assert model.get_layer("output").compute_dtype == "float32"
    y = model(np.zeros((1, 64, 64, 1), np.float32))
    assert y.dtype == "float32" and np.all(y.numpy() == 0.5)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"variant": "4s"}, r"variant='4s'"),
    ({"input_shape": (64, 48, 1)}, r"W=48 is not divisible by 32"),
    ({"input_shape": (40, 64, 1)}, r"H=40 is not divisible by 32.*multiple of 32"),
    ({"fc_filters": 0}, r"fc_filters=0"),
    ({"base_filters": 0}, r"base_filters=0"),
    ({"dropout": 1.0}, r"dropout=1.0"),
    ({"output_activation": "relu"}, r"output_activation='relu'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, pattern):
    kwargs = {"base_filters": 4, "fc_filters": 16, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        build_fcn(**kwargs)


# ---------------------------------------------------------------- saving


def test_keras_round_trip_without_custom_objects(tmp_path):
    model = small("8s")
    x = np.random.default_rng(1).random((2, 64, 64, 1), dtype=np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.train_on_batch(x, (x > 0.5).astype("float32"))  # leave the zero start
    assert np.any(model.get_layer("score_pool3").kernel.numpy())
    path = tmp_path / "fcn.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model(x), reloaded(x))
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    # the config alone (no weights) rebuilds the bilinear initialization
    rebuilt = keras.Model.from_config(model.get_config())
    np.testing.assert_allclose(rebuilt.get_layer("upscore8").kernel.numpy()[:, :, 0, 0],
                               hand_bilinear(8), atol=1e-7)


# ---------------------------------------------------------------- wiring


@pytest.mark.parametrize("architecture", ["fcn8s", "fcn16s", "fcn32s"])
def test_build_model_ignores_knobs_fcn_does_not_have(architecture):
    model = build_model(architecture, base_filters=4, fc_filters=16, depth=4,
                        residual_convs=3, normalization="batch", dropout=0.0)
    assert model.name == architecture
    assert "fc6_dropout" not in {layer.name for layer in model.layers}
    with pytest.raises(ValueError, match="architecture='fcn4s'"):
        build_model("fcn4s")


def test_fusionnet_ignores_fc_filters():
    assert build_model("fusionnet", base_filters=4, depth=2, fc_filters=99).name == "fusionnet"


def test_predictor_and_export_align_to_32(tmp_path):
    from fusionnet_tf import Predictor
    from fusionnet_tf.export.model_card import architecture_knobs
    from fusionnet_tf.export.saved_model import FusionNetExportModule

    model = small()
    predictor = Predictor(model, tile_shape=64, overlap=16)
    assert predictor.align == 32 and predictor.input_multiple == 32
    origins = predictor.tile_origins(150, 100)
    for axis, size in ((0, 150), (1, 100)):
        starts = sorted({origin[axis] for origin in origins})
        assert all(start % 32 == 0 for start in starts[:-1]) and starts[-1] == size - 64
    assert predictor.predict(np.random.rand(150, 100).astype("float32")).shape == (150, 100)
    with pytest.raises(ValueError, match=r"multiple of 2\*\*depth = 32"):
        Predictor(model, tile_shape=48, overlap=8)
    assert FusionNetExportModule(model, tile_size=64, overlap=16).align == 32
    assert architecture_knobs(model)["input_multiple"] == 32


def test_info_lists_fcn_and_prints_its_summary(capsys):
    from fusionnet_tf.cli import info, main

    rows = info.parameter_table(bases=(4,))
    fcn_rows = [row for row in rows if row[0] == "fcn8s"]
    assert fcn_rows == [("fcn8s", 4, 5, build_fcn(base_filters=4).count_params())]
    assert main(["info", "--architecture", "fcn16s", "--base-filters", "4",
                 "--fc-filters", "16"]) == 0
    out = capsys.readouterr().out
    assert "fuse_pool4" in out and "fuse_pool3" not in out


@pytest.mark.parametrize("architecture, knobs", [
    ("fusionnet", {"depth": 2}), ("unet", {"depth": 2}), ("fcn8s", {}), ("fcn16s", {}),
    ("fcn32s", {}), ("fcn8s", {"fc_filters": 24, "dropout": 0.0, "num_classes": 3,
                               "output_activation": "softmax"})])
def test_count_parameters_equals_count_params_of_the_built_model(architecture, knobs):
    from fusionnet_tf.models import count_parameters

    for base in (1, 3, 5, 16):  # off the sampled bases 4, 8, 12
        expected = build_model(architecture, base_filters=base, **knobs).count_params()
        assert count_parameters(architecture, base_filters=base, **knobs) == expected, base


def test_count_parameters_keeps_the_base_64_numbers_of_full_builds():
    from fusionnet_tf.models import count_parameters

    # count_params() of the full base-64 builds (info table before this function)
    assert count_parameters("fusionnet", base_filters=64, depth=4) == 75_065_217
    assert count_parameters("unet", base_filters=64, depth=4) == 31_051_137
    assert count_parameters("fcn8s", base_filters=64) == 134_264_547
    with pytest.raises(ValueError, match="`base_filters` must be an integer >= 1"):
        count_parameters("unet", base_filters=0)


def test_info_table_builds_no_wide_model(monkeypatch):
    import fusionnet_tf.models as models
    from fusionnet_tf.cli import info

    built = []

    def recording_build(architecture="fusionnet", **kwargs):
        built.append(kwargs["base_filters"])
        return build_model(architecture, **kwargs)

    models._sample_counts.cache_clear()
    monkeypatch.setattr(models, "build_model", recording_build)
    rows = info.parameter_table()
    assert [row[:3] for row in rows] == [(a, b, 5 if a == "fcn8s" else 4)
                                         for a in info.TABLE_ARCHITECTURES for b in (16, 32, 64)]
    assert built and max(built) <= 12
    models._sample_counts.cache_clear()  # the samples were built by the recording wrapper


def test_config_tile_sizes_must_be_multiples_of_32():
    from fusionnet_tf.training.config import config_from_dict, input_multiple as multiple_of

    config = config_from_dict({"model": {"architecture": "fcn16s", "fc_filters": 16}})
    assert multiple_of(config.model) == 32
    assert multiple_of(config_from_dict({"model": {"depth": 3}}).model) == 8
    with pytest.raises(ValueError, match="'model.architecture' must be one of"):
        config_from_dict({"model": {"architecture": "fcn4s"}})
    with pytest.raises(ValueError, match="'model.fc_filters' must be >= 1"):
        config_from_dict({"model": {"fc_filters": 0}})


def test_shipped_fcn8s_config_loads():
    from fusionnet_tf.training.config import check_values, load_config

    config = load_config("training/configs/isbi2012_fcn8s.yaml")
    check_values(config)
    assert config.model.architecture == "fcn8s" and config.data.tile_size % 32 == 0


def test_run_folder_written_before_fc_filters_existed_still_resumes(tmp_path):
    """A config.yaml without a key added later compares equal to the defaults."""
    from fusionnet_tf.training.config import config_from_dict, config_to_dict
    from fusionnet_tf.training.run import prepare_output_dir

    config = config_from_dict({"output_dir": str(tmp_path)})
    old = config_to_dict(config)
    del old["model"]["fc_filters"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_output_dir(config, write=False)  # no FileExistsError
    config.model.base_filters = 8
    with pytest.raises(FileExistsError, match="differs in: model"):
        prepare_output_dir(config, write=False)


@pytest.fixture
def tiny_stack(tmp_path):
    rng = np.random.default_rng(0)
    membrane = np.zeros((4, 64, 64), bool)
    for n in range(4):  # different slices (identical planes would read as one image)
        membrane[n, 3 * n::16, :] = membrane[n, :, 5 * n::16] = True
    image = np.where(membrane, 60, 190) + rng.normal(0, 10, membrane.shape)
    tifffile.imwrite(tmp_path / "img.tif", np.clip(image, 0, 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8))
    return tmp_path / "img.tif", tmp_path / "lab.tif"


def test_fusionnet_train_runs_fcn8s(tiny_stack, tmp_path, monkeypatch):
    import fusionnet_tf.cli as cli

    images, labels = tiny_stack
    mapping = {
        "model": {"architecture": "fcn8s", "base_filters": 4, "fc_filters": 16},
        "data": {"train_images": str(images), "train_labels": str(labels),
                 "train_slices": "0-2", "val_slices": "3", "tile_size": 32,
                 "val_tile_size": 64},
        "augment": False, "epochs": 1, "steps_per_epoch": 2, "batch_size": 2,
        "output_dir": str(tmp_path / "run"), "tensorboard": False, "isbi_eval_every": 0,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(mapping))
    monkeypatch.setattr(cli, "COMMANDS", {"train": "fusionnet_tf.cli.train"})
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    trained = keras.saving.load_model(tmp_path / "run" / "best.keras", compile=False)
    assert trained.name == "fcn8s"
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"),
                     "--set", "data.tile_size=48", "--check"]) == 2


# ---------------------------------------------------------------- VGG16 weights


def vgg_shaped(base, fc, channels=3):
    """A small keras.applications.VGG16-shaped model (same layer names, narrower)."""
    inputs = keras.Input((224, 224, channels))  # 7x7 at pool5, as in VGG16
    x = inputs
    for block, (convs, width) in enumerate(((2, 1), (2, 2), (3, 4), (3, 8), (3, 8)), start=1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(base * width, 3, padding="same", activation="relu",
                              name=f"block{block}_conv{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(fc, activation="relu", name="fc1")(x)
    x = layers.Dense(fc, activation="relu", name="fc2")(x)
    return keras.Model(inputs, layers.Dense(3, name="predictions")(x), name="vgg16")


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    keras.utils.set_random_seed(3)
    folder = tmp_path_factory.mktemp("vgg")
    source = vgg_shaped(base=4, fc=16)
    source.save(folder / "vgg.keras")
    source.save_weights(folder / "vgg.weights.h5")
    source.save(folder / "vgg_legacy.h5")  # Keras 2 HDF5 layout, like the official files
    weights = {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
    keras.backend.clear_session()
    return folder, weights


@pytest.mark.parametrize("filename", ["vgg.keras", "vgg.weights.h5", "vgg_legacy.h5"])
def test_vgg16_weights_map_every_layer(vgg_files, filename):
    folder, source = vgg_files
    model = small()
    loaded = load_vgg16_weights(model, folder / filename)
    backbone = [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
                for c in range(1, n + 1)]
    assert loaded == backbone + ["fc6", "fc7"]
    first = model.get_layer("block1_conv1").get_weights()
    np.testing.assert_allclose(first[0], source["block1_conv1"][0].sum(axis=2, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_array_equal(first[1], source["block1_conv1"][1])
    for name in backbone[1:]:
        for got, want in zip(model.get_layer(name).get_weights(), source[name]):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.get_layer("fc6").kernel.numpy(),
                                  source["fc1"][0].reshape(7, 7, 32, 16))
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy()[0, 0], source["fc2"][0])
    assert not np.any(model.get_layer("score_fr").kernel.numpy())  # heads keep their init


def test_vgg16_weights_through_build_fcn_keep_the_one_half_start(vgg_files):
    folder, source = vgg_files
    model = build_fcn(base_filters=4, fc_filters=16, vgg16_weights=str(folder / "vgg.keras"))
    np.testing.assert_array_equal(model.get_layer("block5_conv3").get_weights()[0],
                                  source["block5_conv3"][0])
    assert np.all(model(np.random.rand(1, 64, 64, 1).astype("float32")).numpy() == 0.5)


def test_keras_applications_vgg16_notop_loads(tmp_path):
    """A randomly initialised keras.applications.VGG16 (never downloaded) fits base 64."""
    source = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    source.save(tmp_path / "vgg16_notop.keras")
    kernel = source.get_layer("block4_conv2").get_weights()[0]
    keras.backend.clear_session()
    model = build_fcn(base_filters=64, fc_filters=8, dropout=0.0)
    loaded = load_vgg16_weights(model, tmp_path / "vgg16_notop.keras")
    assert len(loaded) == 13 and "fc6" not in loaded  # no top: fc6/fc7 keep their init
    np.testing.assert_array_equal(model.get_layer("block4_conv2").get_weights()[0], kernel)


def test_vgg16_weights_with_wrong_shapes_give_a_clear_error(vgg_files):
    folder, _ = vgg_files
    model = build_fcn(base_filters=8, fc_filters=16)
    before = model.get_layer("block1_conv1").get_weights()[0]
    with pytest.raises(ValueError, match=r"vgg\.keras: layer 'block1_conv1' has kernel "
                                         r"\(3, 3, 1, 4\).*needs \(3, 3, 1, 8\)"):
        load_vgg16_weights(model, folder / "vgg.keras")
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], before)
    wide_fc = build_fcn(base_filters=4, fc_filters=32)
    before = wide_fc.get_layer("block5_conv3").get_weights()[0]
    with pytest.raises(ValueError, match=r"layer 'fc1' has kernel \(1568, 16\).*'fc6' needs"):
        load_vgg16_weights(wide_fc, folder / "vgg.keras")
    # nothing is loaded unless everything fits
    np.testing.assert_array_equal(wide_fc.get_layer("block5_conv3").get_weights()[0], before)


def test_vgg16_weights_missing_file_or_layer(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        small(vgg16_weights=tmp_path / "none.keras")
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, layers.Conv2D(4, 3, name="conv")(inputs))
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="has no layer 'block1_conv1'"):
        small(vgg16_weights=tmp_path / "other.keras")
