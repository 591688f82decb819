"""Predictor: seamless tiling, TTA, batching, model loading, BN folding."""

import keras
import numpy as np
import pytest
from keras import layers

from fusionnet_tf.inference import Predictor, load_model
from fusionnet_tf.inference.backends.saved_model import SavedModelFunction
from fusionnet_tf.inference.optimize import fold_batchnorm
from fusionnet_tf.models import build_fusionnet


def conv_model(seed=0, convs=3):
    """Fully convolutional, no pooling: translation equivariant up to 'same' borders."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 1))
    x = inputs
    for i in range(convs):
        x = layers.Conv2D(4 if i < convs - 1 else 1, 3, padding="same",
                          activation="relu" if i < convs - 1 else "sigmoid")(x)
    return keras.Model(inputs, x)


def random_images(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def dihedral_reference(x, k):
    """Transform k of an (H, W) array written out by hand: rotate k % 4 quarter turns, then flip W."""
    y = np.rot90(x, k % 4)
    return y[:, ::-1] if k >= 4 else y


def inverse_reference(y, k):
    if k >= 4:
        y = y[:, ::-1]
    return np.rot90(y, -(k % 4))


# === Tiling and blending ===

def test_identity_reproduces_the_input():
    images = random_images((2, 70, 45))
    predictor = Predictor(lambda batch: batch, tile_shape=32, overlap=8, tta=8, batch_size=5)
    np.testing.assert_allclose(predictor.predict(images), images, rtol=0, atol=1e-6)
    single = Predictor(lambda batch: batch, tile_shape=32, overlap=8, tta=1, blending="constant")
    np.testing.assert_array_equal(single.predict(images[0, :32, :32]), images[0, :32, :32])


def test_tiled_equals_whole_image_away_from_the_border():
    model = conv_model()
    image = random_images((96, 112), seed=1)
    whole = model(image[None, ..., None]).numpy()[0, ..., 0]
    tiled = Predictor(model, tile_shape=48, overlap=24, tta=1).predict(image)
    assert len(Predictor(model, tile_shape=48, overlap=24, tta=1).tile_origins(96, 112)) > 4
    margin = 3  # receptive-field radius of three 3x3 convolutions
    inner = (slice(margin, -margin),) * 2
    np.testing.assert_allclose(tiled[inner], whole[inner], rtol=0, atol=1e-4)
    # without overlap the tile seams show
    seams = Predictor(model, tile_shape=48, overlap=0, tta=1, blending="constant").predict(image)
    assert np.abs(seams[inner] - whole[inner]).max() > 1e-3


def test_predict_is_built_from_the_public_pieces():
    """Reassembling tiles by hand (as block-wise volume prediction does) is bit-identical."""
    model = conv_model(seed=2)
    image = random_images((50, 70), seed=2)
    predictor = Predictor(model, tile_shape=32, overlap=8, batch_size=64, tta=4)
    side = predictor.tile_shape
    origins = predictor.tile_origins(*image.shape)
    tiles = np.stack([image[y:y + side, x:x + side] for y, x in origins])
    probs = predictor.predict_tiles(tiles)
    total = np.zeros_like(image)
    weights = np.zeros_like(image)
    for (y, x), prob in zip(origins, probs):
        total[y:y + side, x:x + side] += prob * predictor.blend_weights
        weights[y:y + side, x:x + side] += predictor.blend_weights
    np.testing.assert_array_equal(predictor.predict(image), total / weights)


def test_small_images_are_reflect_padded_and_cropped():
    seen = []

    def record(batch):
        seen.append(batch.copy())
        return batch

    predictor = Predictor(record, tile_shape=32, overlap=8, tta=1)
    image = random_images((10, 40))
    assert predictor.tile_origins(10, 40) == [(0, 0), (0, 8)]
    out = predictor.predict(image)
    assert out.shape == (10, 40)
    np.testing.assert_allclose(out, image, atol=1e-6)
    tile = seen[0][0, ..., 0]
    np.testing.assert_array_equal(tile[10], image[8, :32])  # row 10 mirrors row 8


def test_stack_equals_slice_by_slice_and_batches_are_bounded():
    sizes = []
    model = conv_model(seed=3)

    def recording(batch):
        sizes.append(len(batch))
        return model(batch).numpy()

    stack = random_images((3, 40, 40), seed=3)
    predictor = Predictor(recording, tile_shape=32, overlap=8, tta=8, batch_size=6)
    result = predictor.predict(stack)
    # 3 slices x 4 tiles x 8 variants = 96 inputs, in full batches of 6 with no
    # padding (tiles go to predict_tiles 3 at a time: lcm(6, 8) = 24 inputs).
    assert set(sizes) == {6}
    assert sum(sizes) == 3 * 4 * 8
    for image, expected in zip(stack, result):
        np.testing.assert_allclose(predictor.predict(image), expected, atol=1e-6)



def test_predict_steps_reports_progress_returns_the_prediction_and_can_stop():
    calls = []
    model = conv_model(seed=4)

    def counting(batch):
        calls.append(len(batch))
        return model(batch).numpy()

    stack = random_images((2, 40, 40), seed=4)  # 2 slices x 4 tiles of 32 px
    predictor = Predictor(counting, tile_shape=32, overlap=8, tta=1, batch_size=2)
    steps = predictor.predict_steps(stack)
    reported = []
    while True:
        try:
            reported.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert reported == [(0, 8), (2, 8), (4, 8), (6, 8), (8, 8)]
    np.testing.assert_array_equal(result, predictor.predict(stack))
    calls.clear()
    stopped = predictor.predict_steps(stack)
    next(stopped), next(stopped)
    stopped.close()  # a GUI's cancel: no further network call
    assert calls == [2]
    with pytest.raises(ValueError, match="images"):
        next(predictor.predict_steps(np.zeros((2, 2, 2, 2), np.float32)))


# === Test-time augmentation ===

def test_tta_with_an_equivariant_model_equals_plain_prediction():
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    image = random_images((40, 56), seed=4)
    plain = Predictor(model, tile_shape=32, overlap=8, tta=1).predict(image)
    for tta in (4, 8):
        np.testing.assert_allclose(Predictor(model, tile_shape=32, overlap=8, tta=tta).predict(image),
                                   plain, atol=1e-6)


@pytest.mark.parametrize("tta,transforms", [(8, range(8)), (4, (0, 2, 4, 6))])
def test_tta_undoes_each_transform(tta, transforms):
    ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)

    def not_equivariant(batch):  # depends on absolute position and direction
        return np.cumsum(batch, axis=2) * ramp[None, None, :, None] + ramp[None, :, None, None]

    image = random_images((32, 32), seed=5)
    reference = np.mean([
        inverse_reference(not_equivariant(dihedral_reference(image, k)[None, ..., None])[0, ..., 0], k)
        for k in transforms], axis=0)
    predictor = Predictor(not_equivariant, tile_shape=32, overlap=8, tta=tta, batch_size=3)
    np.testing.assert_allclose(predictor.predict(image), reference, rtol=1e-5, atol=1e-5)
    plain = Predictor(not_equivariant, tile_shape=32, overlap=8, tta=1).predict(image)
    assert np.abs(plain - reference).max() > 0.1  # the transforms do matter for this model


# === Keras models: loading, folding, validation ===

def randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.8, 1.2, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.8, 1.2, variance.shape)])


def test_batchnorm_folding_matches_within_1e5():
    keras.utils.set_random_seed(0)  # untrained nets saturate; this seed keeps outputs in (0.5, 1)
    model = build_fusionnet(base_filters=4, depth=2)
    randomize_batchnorm(model)
    folded = fold_batchnorm(model)
    batchnorms = [l for l in model.layers if isinstance(l, layers.BatchNormalization)]
    assert batchnorms and not any(isinstance(l, layers.BatchNormalization) for l in folded.layers)
    assert {l.name for l in folded.layers} == {l.name for l in model.layers} - {l.name for l in batchnorms}
    x = random_images((2, 32, 32, 1), seed=6)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), atol=1e-5)
    fast = Predictor(model, tile_shape=32, overlap=8).predict(x[0, ..., 0])
    slow = Predictor(model, tile_shape=32, overlap=8, fold_batchnorm=False).predict(x[0, ..., 0])
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_xla_compiled_network_matches_within_1e5():
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=2)
    randomize_batchnorm(model)
    image = random_images((1, 48, 40, 1), seed=7)[0, ..., 0]
    xla = Predictor(model, tile_shape=32, overlap=8, tta=4, engine="xla")
    assert xla.network.network._jit_compile is True  # the tf.function is compiled by XLA
    plain = Predictor(model, tile_shape=32, overlap=8, tta=4).predict(image)
    np.testing.assert_allclose(xla.predict(image), plain, atol=1e-5)


def test_frozen_engine_equals_plain_and_bakes_the_weights_in(monkeypatch):
    from test_optimize import conv_filter_inputs

    from fusionnet_tf.inference import optimize

    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=2)
    randomize_batchnorm(model)
    image = random_images((1, 48, 40, 1), seed=8)[0, ..., 0]
    plain = Predictor(model, tile_shape=32, overlap=8, tta=4, engine="plain")
    frozen = Predictor(model, tile_shape=32, overlap=8, tta=4, engine="frozen")
    assert frozen.variant == {"engine": "frozen", "precision": "float32"}
    assert not plain.network.constant_weights and frozen.network.constant_weights
    assert "Const" not in conv_filter_inputs(plain.network.network)
    kinds = conv_filter_inputs(frozen.network.network)
    assert kinds and set(kinds) == {"Const"}  # what oneDNN caches blocked kernels for
    np.testing.assert_allclose(frozen.predict(image), plain.predict(image), rtol=0, atol=1e-5)
    assert not Predictor(model, tile_shape=32, overlap=8, engine="xla").network.constant_weights
    monkeypatch.setattr(optimize, "MAX_CONSTANT_BYTES", 1000)  # more than a graph can hold
    with pytest.raises(ValueError, match="constant_weights=True.*'fusionnet'"):
        Predictor(model, tile_shape=32, overlap=8, engine="frozen")


def test_tile_must_divide_by_two_to_the_depth():
    model = build_fusionnet(base_filters=4, depth=2)
    with pytest.raises(ValueError, match=r"2\*\*depth = 4.*tile_shape=30"):
        Predictor(model, tile_shape=30, overlap=8)
    assert Predictor(model, tile_shape=32, overlap=8).align == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(tta=2), "tta=2"), (dict(batch_size=0), "batch_size=0"),
    (dict(blending="box"), "blending='box'"), (dict(overlap=32), "overlap=32"),
    (dict(tile_shape=(32, 48)), "square"),
])
def test_bad_settings(kwargs, match):
    settings = dict(tile_shape=32, overlap=8)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Predictor(lambda b: b, **settings)


def test_bad_inputs_and_outputs():
    predictor = Predictor(lambda b: b, tile_shape=32, overlap=8)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 5\)"):
        predictor.predict(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(np.full((8, 8), np.nan))
    for value in (np.inf, -np.inf):  # one bad pixel of an otherwise valid stack
        images = np.zeros((2, 8, 8), np.float32)
        images[1, 2, 3] = value
        with pytest.raises(ValueError, match=r"^`images` contains 1 NaN or infinite value\(s\), "
                                             r"the first at index \(1, 2, 3\)"):
            predictor.predict(images)
    with pytest.raises(ValueError, match=r"\(B, 32, 32\).*\(2, 16, 16\)"):
        predictor.predict_tiles(np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="output shape"):
        Predictor(lambda b: b[:, :8], tile_shape=32, overlap=8).predict(np.zeros((32, 32)))
    with pytest.raises(RuntimeError, match="non-finite|NaN"):
        Predictor(lambda b: b * np.nan, tile_shape=32, overlap=8).predict(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="model of type int"):
        Predictor(3, tile_shape=32, overlap=8)


def test_load_keras_file_and_savedmodel(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=2)
    randomize_batchnorm(model, seed=1)
    image = random_images((40, 40), seed=7)
    expected = Predictor(model, tile_shape=32, overlap=8).predict(image)
    model.save(tmp_path / "m.keras")
    from_path = Predictor(str(tmp_path / "m.keras"), tile_shape=32, overlap=8)
    np.testing.assert_allclose(from_path.predict(image), expected, atol=1e-6)

    model.export(tmp_path / "saved", format="tf_saved_model", verbose=False)
    loaded = load_model(tmp_path / "saved")
    assert isinstance(loaded, SavedModelFunction)
    savedmodel = Predictor(loaded, tile_shape=32, overlap=8, align=4)
    np.testing.assert_allclose(savedmodel.predict(image), expected, atol=1e-5)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="weights.txt"):
        load_model(tmp_path / "weights.txt")
    with pytest.raises(ValueError, match="saved_model.pb"):
        load_model(tmp_path)


def test_progress_bar_goes_to_stderr(capsys):
    Predictor(lambda b: b, tile_shape=32, overlap=8, progress=True).predict(np.zeros((2, 40, 40)))
    captured = capsys.readouterr()
    assert "8/8" in captured.err and captured.out == ""


def test_conv_flops_hand_computed():
    from fusionnet_tf.inference.optimize import conv_flops

    model = build_fusionnet(base_filters=4, depth=1)
    # 8x8 input: enc1 conv_in 1->4 and 4 convs 4->4 at 8x8; bridge conv_in 4->8 and 4 convs
    # 8->8 at 4x4; ConvTranspose 2x2 8->4 on 4x4; dec1 5 convs 4->4 at 8x8; 1x1 output 4->1
    expected = (2 * 9 * 1 * 4 * 64 + 4 * 2 * 9 * 16 * 64 + 2 * 9 * 4 * 8 * 16 + 4 * 2 * 9 * 64 * 16
                + 2 * 4 * 8 * 4 * 16 + 5 * 2 * 9 * 16 * 64 + 2 * 4 * 64)
    assert expected == 258048
    assert conv_flops(model, 8, 8) == expected
    assert conv_flops(model, 16, 8, batch=3) == 6 * expected
    assert len(fold_batchnorm(model).layers) < len(model.layers)  # graph left intact


def test_sequential_models_are_folded_and_recast():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, 1)), layers.Conv2D(2, 3, padding="same"),
                              layers.BatchNormalization(), layers.Conv2D(1, 1, activation="sigmoid")])
    randomize_batchnorm(model)
    image = random_images((32, 32), seed=8)
    expected = model(image[None, ..., None], training=False).numpy()[0, ..., 0]
    predictor = Predictor(model, tile_shape=32, overlap=8, tta=1, engine="plain")
    assert not any(isinstance(l, layers.BatchNormalization) for l in predictor.network.model.layers)
    np.testing.assert_allclose(predictor.predict(image), expected, atol=1e-5)
    half = Predictor(model, tile_shape=32, overlap=8, tta=1, precision="mixed_bfloat16", engine="plain")
    convs = [l for l in half.network.model.layers if isinstance(l, layers.Conv2D)]
    assert [l.dtype_policy.compute_dtype for l in convs] == ["bfloat16", "float32"]  # output kept
    np.testing.assert_allclose(half.predict(image), expected, atol=3e-2)


def test_nested_models_refuse_a_precision_change():
    inner_input = keras.Input((None, None, 1))
    inner = keras.Model(inner_input, layers.Conv2D(1, 3, padding="same")(inner_input), name="inner")
    inputs = keras.Input((None, None, 1))
    outer = keras.Model(inputs, layers.Activation("sigmoid")(inner(inputs)), name="outer")
    with pytest.raises(ValueError, match="nested models.*'inner'"):
        Predictor(outer, tile_shape=32, overlap=8, precision="mixed_bfloat16")
    Predictor(outer, tile_shape=32, overlap=8)  # float32 is fine


def test_a_conv_that_is_also_an_output_is_not_folded():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    conv = layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    normed = layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, [conv, normed])
    randomize_batchnorm(model)
    folded = fold_batchnorm(model)
    x = random_images((1, 16, 16, 1), seed=11)
    for got, want in zip(folded(x), model(x, training=False)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


# === Compute precision ===


def _compute_dtypes(model):
    return {layer.name: layer.dtype_policy.compute_dtype for layer in model.layers}


@pytest.mark.parametrize("precision,half,atol", [("mixed_bfloat16", "bfloat16", 3e-2),
                                                 ("mixed_float16", "float16", 3e-3)])
def test_half_precision_computes_in_half_and_stays_close(precision, half, atol):
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=4, depth=2)
    randomize_batchnorm(model)
    image = random_images((1, 48, 40, 1), seed=9)[0, ..., 0]
    plain = Predictor(model, tile_shape=32, overlap=8, engine="plain")
    fast = Predictor(model, tile_shape=32, overlap=8, precision=precision, engine="plain")
    dtypes = _compute_dtypes(fast.network.model)
    assert dtypes["enc1_conv_in"] == half and dtypes["dec1_skip_add"] == half
    assert dtypes["output"] == "float32"  # the sigmoid (and so the output) stays float32
    assert set(_compute_dtypes(plain.network.model).values()) == {"float32"}
    assert not any(isinstance(l, layers.BatchNormalization) for l in fast.network.model.layers)
    expected = plain.predict(image)
    predicted = fast.predict(image)
    assert predicted.dtype == np.float32 and predicted.shape == image.shape
    difference = np.abs(predicted - expected)
    assert 0 < difference.max() < atol  # rounded differently, but close
    assert model.dtype_policy.name == "float32"  # the caller's model is untouched


def test_precision_errors():
    model = build_fusionnet(base_filters=4, depth=2)
    with pytest.raises(ValueError, match="precision='bfloat16'"):
        Predictor(model, tile_shape=32, overlap=8, precision="bfloat16")
    with pytest.raises(ValueError, match="precision='mixed_bfloat16' applies to Keras models only; a model of type function"):
        Predictor(lambda b: b, tile_shape=32, overlap=8, precision="mixed_bfloat16")


def test_batchnorm_after_an_activation_is_not_folded():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    x = layers.Conv2D(3, 3, padding="same", activation="relu", name="conv_relu")(inputs)
    x = layers.BatchNormalization(name="bn_after_relu")(x)
    x = layers.Conv2D(3, 3, padding="same", name="conv_linear")(x)
    x = layers.BatchNormalization(name="bn_after_linear")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    randomize_batchnorm(model)
    folded = fold_batchnorm(model)
    names = {l.name for l in folded.layers}
    assert "bn_after_relu" in names and "bn_after_linear" not in names
    x = random_images((1, 16, 16, 1), seed=10)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_check_precision_applies_to_every_kind_of_model(tmp_path):
    from fusionnet_tf.inference import check_precision_applies

    for model in (None, "runs/x/best.keras", build_fusionnet(base_filters=4, depth=1)):
        check_precision_applies("mixed_bfloat16", model)  # Keras models and .keras paths
    for model in (tmp_path, "http://localhost:8501/v1/models/m", lambda b: b):
        check_precision_applies("float32", model)  # float32 applies to anything
    for model, what in ((tmp_path, "the SavedModel"), ("https://h/v1/models/m", "the serving endpoint"),
                        (lambda b: b, "a model of type function")):
        with pytest.raises(ValueError, match=f"precision='mixed_float16' applies to Keras models only; {what}"):
            check_precision_applies("mixed_float16", model)
    with pytest.raises(ValueError, match="precision='bf16'"):
        check_precision_applies("bf16", None)
