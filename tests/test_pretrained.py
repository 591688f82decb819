"""The shipped reference model and the quickstart example (issue 7)."""

import numpy as np
import pytest
import tifffile

import fusionnet_tf
from fusionnet_tf.cli import main
from fusionnet_tf.data import normalize, read_stack
from fusionnet_tf.inference import Predictor
from fusionnet_tf.pretrained import example_path


@pytest.fixture(scope="module")
def example():
    stack = read_stack(str(example_path()))
    assert stack.shape == (3, 512, 512) and stack.dtype == np.uint8
    return stack


@pytest.fixture(scope="module")
def prediction(example):
    model = fusionnet_tf.load_pretrained()
    assert model.output.dtype == "float32"
    return Predictor(model, tile_shape=512, tta=1).predict(normalize(example[:2]))


def test_pretrained_output_is_a_probability_map(prediction):
    assert prediction.shape == (2, 512, 512) and prediction.dtype == np.float32
    assert np.isfinite(prediction).all()
    assert prediction.min() >= 0.0 and prediction.max() <= 1.0


def test_pretrained_separates_membrane_from_interior(example, prediction):
    membrane = prediction > 0.5
    # ISBI membranes cover about 22% of the pixels; an untrained or broken
    # model gives ~0% or ~100% (saturated) or ~50% (noise).
    assert 0.08 < membrane.mean() < 0.40
    # Confident on both sides: the two classes' mean probabilities are far apart.
    assert prediction[membrane].mean() - prediction[~membrane].mean() > 0.6
    # Membranes are dark in these EM images: the pixels the model calls membrane
    # are much darker than the rest.
    image = example[:2].astype(np.float32)
    assert image[membrane].mean() < image[~membrane].mean() - 30
    # Membranes form thin connected curves, not isolated specks: most membrane
    # pixels have a membrane 4-neighbour.
    neighbours = np.zeros_like(membrane)
    neighbours[:, 1:] |= membrane[:, :-1]
    neighbours[:, :-1] |= membrane[:, 1:]
    neighbours[:, :, 1:] |= membrane[:, :, :-1]
    neighbours[:, :, :-1] |= membrane[:, :, 1:]
    assert (neighbours[membrane]).mean() > 0.9


def test_predict_without_model_uses_pretrained(tmp_path):
    out = tmp_path / "membranes.tif"
    code = main(["predict", str(example_path()), "-o", str(out), "--tta", "1", "--quiet"])
    assert code == 0
    result = tifffile.imread(out)
    assert result.shape == (3, 512, 512) and result.dtype == np.float32
    assert 0.08 < (result > 0.5).mean() < 0.40


def test_bfloat16_prediction_matches_float32_on_real_em(prediction, tmp_path):
    """``--precision mixed_bfloat16`` on the shipped model and real EM slices (CLI round trip)."""
    out = tmp_path / "bf16.tif"
    code = main(["predict", str(example_path()), "-o", str(out), "--tta", "1", "--quiet",
                 "--precision", "mixed_bfloat16"])
    assert code == 0
    fast = tifffile.imread(out)[:2]
    assert fast.shape == prediction.shape and fast.dtype == np.float32
    difference = np.abs(fast - prediction)
    assert 0 < difference.mean() < 5e-3  # measured 9e-4 on these slices
    assert ((fast > 0.5) == (prediction > 0.5)).mean() > 0.995  # measured 0.9991


def test_predict_cli_shows_a_progress_bar_over_tiles(tmp_path, capsys):
    out = tmp_path / "one.tif"
    assert main(["predict", str(example_path()), "-o", str(out), "--tta", "1", "--tile-size", "256",
                 "--overlap", "32"]) == 0
    err = capsys.readouterr().err
    # 3 slices x a 3 x 3 grid of 256-px tiles (overlap >= 32 on 512 px)
    assert "predict" in err and "27/27" in err and "tile" in err
    assert tifffile.imread(out).shape == (3, 512, 512)
