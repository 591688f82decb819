"""Predictor on 3D affinity models: N-D tiles and blending, affinity TTA, offsets, bad input."""

import json

import keras
import numpy as np
import pytest

from affinity_models import OFFSETS, affinity_model, conv_model, pointwise_model, true_affinities
from fusionnet_tf.inference import Predictor, affinity_tta, tiling
from fusionnet_tf.inference.predictor import model_offsets_path

@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).random((7, 26, 23), dtype=np.float32)


@pytest.fixture(scope="module")
def aff_model():
    return affinity_model(OFFSETS)


# === N-D tiling and blending ===

def test_blend_weights_are_the_outer_product_of_one_window_per_axis():
    for blending in ("gaussian", "cosine", "constant"):
        weights = tiling.blend_weights((4, 8, 6), blending)
        assert weights.shape == (4, 8, 6) and weights.dtype == np.float32
        axes = [tiling.blend_weights((n, 1), blending)[:, 0] for n in (4, 8, 6)]
        np.testing.assert_allclose(weights, np.einsum("i,j,k->ijk", *axes), rtol=1e-6)
        # the 2D maps are unchanged: an int is a square tile
        np.testing.assert_array_equal(tiling.blend_weights((16, 16), blending),
                                      tiling.blend_weights(16, blending))


def test_nd_grid_is_the_product_of_the_axis_steps():
    origins = tiling.tile_origins_nd((7, 40, 30), (4, 16, 16), (2, 4, 4))
    steps = [tiling.compute_steps(n, t, o) for n, t, o in ((7, 4, 2), (40, 16, 4), (30, 16, 4))]
    assert origins == [(z, y, x) for z in steps[0] for y in steps[1] for x in steps[2]]
    assert tiling.tile_origins(40, 30, 16, 4) == tiling.tile_origins_nd((40, 30), 16, 4)


def test_tiled_3d_equals_untiled_for_a_translation_equivariant_model(volume):
    model = pointwise_model()
    whole = np.moveaxis(model(volume[None, ..., None]).numpy()[0], -1, 0)
    predictor = Predictor(model, tile_shape=(4, 16, 8), tta=1, overlap=(2, 6, 3), engine="plain")
    assert len(predictor.tile_origins(*volume.shape)) >= 3 * 2 * 4  # tiles along z, y and x
    result = predictor.predict(volume)
    assert result.shape == (3,) + volume.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, whole, rtol=0, atol=1e-5)


def test_tiled_3d_conv_model_equals_whole_volume_up_to_tile_border_effects():
    model = conv_model()
    # y, x multiples of the (1, 2, 2) input multiple: tiles see the whole volume's pooling grid
    volume = np.random.default_rng(0).random((12, 24, 22), dtype=np.float32)
    whole = np.moveaxis(model(volume[None, ..., None]).numpy()[0], -1, 0)
    predictor = Predictor(model, tile_shape=(8, 12, 12), tta=1, overlap=(6, 6, 6), engine="plain")
    assert predictor.input_multiple == (1, 2, 2) and predictor.align == (1, 2, 2)
    result = predictor.predict(volume)
    inner = (slice(None), slice(1, -1), slice(3, -3), slice(3, -3))  # receptive radius
    # voxels near a tile's border get a (zero-padded) value with a small gaussian weight
    assert np.abs(result[inner] - whole[inner]).max() < 2e-3
    seams = Predictor(model, tile_shape=(8, 12, 12), tta=1, overlap=(0, 0, 0), blending="constant",
                      engine="plain").predict(volume)
    assert np.abs(seams[inner] - whole[inner]).max() > 2e-2


def test_small_volume_and_single_section_are_padded_to_the_input_multiple():
    model = conv_model()
    predictor = Predictor(model, tile_shape=(8, 32, 32), tta=1, overlap=(2, 8, 8), engine="plain")
    assert predictor.tile_for((1, 13, 9)) == (1, 14, 10)  # not padded to the whole tile
    section = np.random.default_rng(1).random((1, 13, 9), dtype=np.float32)
    result = predictor.predict(section)
    assert result.shape == (3, 1, 13, 9) and result.dtype == np.float32
    padded = np.pad(section, ((0, 0), (0, 1), (0, 1)), mode="edge")
    whole = np.moveaxis(model(padded[None, ..., None]).numpy()[0], -1, 0)[:, :, :13, :9]
    np.testing.assert_allclose(result, whole, rtol=0, atol=1e-5)


# === Affinity TTA ===

def test_the_affinity_model_computes_affinities(aff_model, volume):
    result = Predictor(aff_model, tile_shape=(8, 32, 24), overlap=(2, 8, 6), tta=1, engine="plain",
                       offsets=OFFSETS).predict(volume)
    np.testing.assert_allclose(result, true_affinities(volume, OFFSETS), atol=1e-5)


def test_channel_map_by_hand():
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    assert affinity_tta.channel_map(offsets, 0) == [(0, False), (1, False), (2, False)]
    # flip x: the x affinity is read reversed (shifted), z and y unchanged
    assert affinity_tta.channel_map(offsets, 4) == [(0, False), (1, False), (2, True)]
    # z-flip: the z affinity reversed
    assert affinity_tta.channel_map(offsets, 8) == [(0, True), (1, False), (2, False)]
    # a quarter turn swaps the y and x channels (one of them reversed)
    quarter = affinity_tta.channel_map(offsets, 1)
    assert [c for c, _ in quarter] == [0, 2, 1] and sum(r for _, r in quarter) == 1


@pytest.mark.parametrize("tta", [2, 4, 8, 16])
def test_affinity_tta_equals_no_tta_on_an_equivariant_model(aff_model, volume, tta):
    plain = Predictor(aff_model, tile_shape=(4, 16, 16), tta=1, overlap=(2, 6, 6), engine="plain",
                      offsets=OFFSETS)
    augmented = Predictor(aff_model, tile_shape=(4, 16, 16), overlap=(2, 6, 6), engine="plain",
                          offsets=OFFSETS, tta=tta)
    np.testing.assert_allclose(augmented.predict(volume), plain.predict(volume), rtol=0,
                               atol=1e-5)


def _drop_channel_mapping(offsets, t):
    return [(d, False) for d in range(len(offsets))]


def _drop_shift(offsets, t, original=affinity_tta.channel_map):
    return [(c, False) for c, _ in original(offsets, t)]


@pytest.mark.parametrize("mutant", [_drop_channel_mapping, _drop_shift])
@pytest.mark.parametrize("tta", [2, 8, 16])
def test_affinity_tta_is_wrong_without_the_mapping_or_the_shift(aff_model, volume, monkeypatch,
                                                                mutant, tta):
    plain = Predictor(aff_model, tile_shape=(8, 32, 24), overlap=(2, 8, 6), tta=1, engine="plain",
                      offsets=OFFSETS).predict(volume)
    monkeypatch.setattr(affinity_tta, "channel_map", mutant)
    augmented = Predictor(aff_model, tile_shape=(8, 32, 24), overlap=(2, 8, 6), engine="plain",
                          offsets=OFFSETS,
                          tta=tta).predict(volume)
    assert np.abs(augmented - plain).max() > 0.05


def test_offsets_not_closed_under_a_transform_are_refused():
    offsets = [(0, -3, 0), (0, 0, -1)]
    model = affinity_model(offsets)
    Predictor(model, tile_shape=(4, 16, 16), overlap=(1, 4, 4), offsets=offsets, tta=4,
              engine="plain")  # flips: ok
    with pytest.raises(ValueError, match=r"not closed under TTA transform rot90: \[0, -3, 0\]"):
        Predictor(model, tile_shape=(4, 16, 16), overlap=(1, 4, 4), offsets=offsets, tta=8,
                  engine="plain")


# === Offsets ===

def test_offsets_from_the_model_sidecar(aff_model, tmp_path, volume):
    path = tmp_path / "aff.keras"
    aff_model.save(path)
    assert model_offsets_path(path) == tmp_path / "aff.offsets.json"
    model_offsets_path(path).write_text(json.dumps({"offsets": OFFSETS}))
    predictor = Predictor(str(path), tile_shape=(8, 32, 24), overlap=(2, 8, 6), tta=16,
                          engine="plain")
    assert predictor.offsets == tuple(OFFSETS)
    np.testing.assert_allclose(predictor.predict(volume), true_affinities(volume, OFFSETS),
                               atol=1e-5)
    model_offsets_path(path).write_text(json.dumps({"offsets": OFFSETS[:2]}))
    with pytest.raises(ValueError, match="aff.offsets.json: 2 offsets do not match the model's "
                                         "6 output channels"):
        Predictor(str(path), tile_shape=(8, 32, 24), overlap=(2, 8, 6), tta=1, engine="plain")


# === Bad input ===

@pytest.mark.parametrize("kwargs, match", [
    (dict(offsets=OFFSETS[:3]), "3 offsets do not match the model's 6 output channels"),
    (dict(tta=8), "tta=8 for an affinity model needs its offsets"),
    (dict(offsets=OFFSETS, tta=3), "`tta` must be one of 1, 2, 4, 8, 16; received tta=3"),
    (dict(offsets=[(0, 0, 0)] + OFFSETS[1:]), "non-zero"),
    (dict(offsets=OFFSETS, tile_shape=(4, 16)), "`tile_shape` must be an int or 3 ints"),
])
def test_bad_3d_settings(aff_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Predictor(aff_model, **{"tile_shape": (4, 16, 16), "overlap": (1, 4, 4), "tta": 1,
                                "engine": "plain", **kwargs})


def test_tile_must_be_a_multiple_of_the_input_multiple():
    with pytest.raises(ValueError, match=r"multiple of the model's input multiple \(1, 2, 2\)"):
        Predictor(conv_model(), tile_shape=(4, 15, 16), overlap=(1, 3, 4), tta=1, engine="plain")


def test_a_2d_image_to_a_3d_model_and_the_reverse(aff_model):
    predictor = Predictor(aff_model, tile_shape=(4, 16, 16), overlap=(1, 4, 4), tta=1,
                          offsets=OFFSETS, engine="plain")
    with pytest.raises(ValueError, match=r"3D model needs a \(Z, Y, X\) volume; received a 2D "
                                         r"image of shape \(32, 32\)"):
        predictor.predict(np.zeros((32, 32), np.float32))
    inputs = keras.Input((None, None, 1))
    model_2d = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    with pytest.raises(ValueError, match=r"`offsets` apply to 3D affinity models"):
        Predictor(model_2d, tile_shape=32, overlap=8, offsets=OFFSETS)
    with pytest.raises(ValueError, match="`tile_shape` must be an int or 2 ints for this 2D"):
        Predictor(model_2d, tile_shape=(4, 16, 16), overlap=(1, 4, 4), tta=1)


# === The auto engine's fixed choice for 3D models ===

def test_auto_engine_runs_a_3d_model_frozen_with_plain_results(volume):
    model = conv_model()
    volume = volume[:, :24, :22]
    auto = Predictor(model, tile_shape=(4, 12, 12), tta=1, overlap=(2, 4, 4))
    assert auto.variant == {"engine": "frozen", "precision": "float32"}
    assert auto.network.constant_weights and not auto.network.jit_compile
    plain = Predictor(model, tile_shape=(4, 12, 12), tta=1, overlap=(2, 4, 4), engine="plain")
    assert plain.variant == {"engine": "plain", "precision": "float32"}
    assert not plain.network.constant_weights
    np.testing.assert_allclose(auto.predict(volume), plain.predict(volume), rtol=0, atol=1e-5)
    # frozen = a snapshot of the weights when the Predictor was made
    before = auto.predict(volume)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    np.testing.assert_array_equal(auto.predict(volume), before)


@pytest.mark.parametrize("kwargs, engine", [
    (dict(precision="auto"), "frozen"),          # float32 is the auto precision's first choice
    (dict(precision="mixed_bfloat16"), "plain"),  # frozen is a float32-only candidate
    (dict(engine="xla"), "xla"),                   # an explicit engine is honoured
    (dict(engine="plain"), "plain"),
])
def test_auto_engine_3d_choice_by_settings(kwargs, engine):
    predictor = Predictor(conv_model(), tile_shape=(4, 12, 12), overlap=(1, 3, 3), tta=1,
                          **kwargs)
    assert predictor.variant["engine"] == engine


def test_auto_engine_3d_falls_back_to_plain_for_weights_too_large_for_constants(monkeypatch):
    from fusionnet_tf.inference import optimize

    monkeypatch.setattr(optimize, "MAX_CONSTANT_BYTES", 0)
    predictor = Predictor(conv_model(), tile_shape=(4, 12, 12), overlap=(1, 3, 3), tta=1)
    assert predictor.variant == {"engine": "plain", "precision": "float32"}
