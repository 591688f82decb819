"""Tiling geometry: coverage, border alignment, blend weights (pure NumPy)."""

import numpy as np
import pytest

from fusionnet_tf.dihedral import dihedral_np
from fusionnet_tf.inference import tiling


@pytest.mark.parametrize("size,tile,overlap,align", [
    (100, 32, 8, 1), (100, 32, 8, 4), (512, 512, 64, 16), (513, 512, 64, 16),
    (1000, 512, 64, 16), (1001, 64, 32, 16), (65, 64, 0, 1), (333, 48, 47, 1),
])
def test_steps_start_at_zero_end_at_border_and_overlap(size, tile, overlap, align):
    steps = tiling.compute_steps(size, tile, overlap, align)
    assert steps[0] == 0
    assert steps[-1] + tile == size  # the last tile ends exactly at the border
    assert steps == sorted(set(steps))
    assert all(b - a <= tile - overlap for a, b in zip(steps, steps[1:]))
    assert all(s % align == 0 for s in steps[:-1])


def test_steps_hand_computed():
    # last origin 68, at most 24 apart: 4 tiles at linspace(0, 68, 4) = 0, 22.7, 45.3, 68
    assert tiling.compute_steps(100, 32, 8) == [0, 22, 45, 68]
    assert tiling.compute_steps(64, 64, 16) == [0]
    assert tiling.compute_steps(96, 64, 16) == [0, 32]
    # aligned to 16: 22.7 -> 16, 45.3 -> 32, and a fifth tile is needed for <= 24 gaps
    assert tiling.compute_steps(100, 32, 8, align=16) == [0, 16, 32, 48, 68]


@pytest.mark.parametrize("height,width", [(70, 45), (32, 32), (10, 100), (129, 31), (1, 1)])
def test_tiles_cover_every_pixel(height, width):
    tile, overlap = 32, 8
    padded = tiling.padded_shape(height, width, tile)
    count = np.zeros(padded, int)
    for y, x in tiling.tile_origins(*padded, tile, overlap, align=4):
        assert y + tile <= padded[0] and x + tile <= padded[1]
        count[y:y + tile, x:x + tile] += 1
    assert count.min() >= 1
    assert padded == (max(height, tile), max(width, tile))


def test_tile_origins_raster_order():
    assert tiling.tile_origins(64, 96, 64, 16) == [(0, 0), (0, 32)]
    assert tiling.tile_origins(96, 64, 64, 16) == [(0, 0), (32, 0)]
    assert tiling.tile_origins(96, 96, 64, 16) == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_pad_to_tile_reflects_at_bottom_right():
    image = np.arange(6, dtype=np.float32).reshape(2, 3)  # [[0 1 2] [3 4 5]]
    padded = tiling.pad_to_tile(image, 4)
    assert padded.shape == (4, 4)
    np.testing.assert_array_equal(padded[:2, :3], image)
    np.testing.assert_array_equal(padded[0], [0, 1, 2, 1])   # reflect along W
    np.testing.assert_array_equal(padded[:, 0], [0, 3, 0, 3])  # reflect along H
    big = np.zeros((5, 6))
    assert tiling.pad_to_tile(big, 4) is big
    assert tiling.pad_to_tile(np.ones((1, 1)), 4).shape == (4, 4)  # single pixel: edge mode


@pytest.mark.parametrize("blending", tiling.BLENDINGS)
@pytest.mark.parametrize("tile", [1, 2, 33, 64, 512])
def test_weights_strictly_positive_and_symmetric(blending, tile):
    weights = tiling.blend_weights(tile, blending)
    assert weights.shape == (tile, tile) and weights.dtype == np.float32
    assert weights.min() > 0 and weights.max() <= 1
    for k in range(8):  # same weight for every TTA orientation
        np.testing.assert_allclose(dihedral_np(weights, k, axes=(0, 1)), weights, rtol=1e-6)


def test_gaussian_peaks_in_the_centre_and_zeros_are_clamped():
    weights = tiling.blend_weights(64, "gaussian")
    assert weights[31:33, 31:33].min() == pytest.approx(np.exp(-0.5 * (0.5 / 8) ** 2) ** 2)
    assert weights[0, 0] == pytest.approx(np.exp(-0.5 * (31.5 / 8) ** 2) ** 2, rel=1e-5)
    # sigma so small that the corners underflow to 0 in float32: clamped to the smallest positive
    narrow = tiling.gaussian_weights(512, sigma_scale=0.01)
    positive = narrow[narrow > narrow.min()]
    assert narrow.min() > 0 and narrow.min() <= positive.min()
    assert np.count_nonzero(narrow == narrow.min()) > 1000


def test_weights_are_cached_and_read_only():
    first = tiling.blend_weights(48, "cosine")
    assert tiling.blend_weights(48, "cosine") is first
    with pytest.raises(ValueError):
        first[0, 0] = 5.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile=32, overlap=32), "overlap=32"),
    (dict(tile=32, overlap=-1), "overlap=-1"),
    (dict(tile=0, overlap=0), "tile=0"),
    (dict(tile=30, overlap=4, align=16), "tile=30"),
    (dict(tile=32, overlap=20, align=16), "overlap=20"),
    (dict(tile=32.0, overlap=4), "tile=32.0"),
])
def test_bad_tile_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiling.check_tile_args(**kwargs)


def test_bad_size_and_blending():
    with pytest.raises(ValueError, match="size=20"):
        tiling.compute_steps(20, 32, 8)
    with pytest.raises(ValueError, match="blending='hann'"):
        tiling.blend_weights(32, "hann")
